"""One entry point from the configuration to a model chunk."""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel

from omni_mega.config import ConfigError, ConnectorConfig, ModelConfig, ParallelConfig
from omni_mega.models.llm import build_llm


def build_model(cfg: ModelConfig, parallel: ParallelConfig, vocab_size: int, max_seq: int, dtype: torch.dtype,
                vp_stage: int | None = None, *, mrope_section: list[int] | None = None) -> GPTModel | "OmniModel":
    """This rank's model chunk (virtual stage `vp_stage` when interleaved).

    Text-only configs (`cfg.vit is None`) give a plain GPTModel; otherwise an OmniModel whose vision tower and
    connector exist only on the first pipeline stage (the first virtual chunk of pipeline rank 0).
    vocab_size: the padded LLM vocabulary (`models.llm.padded_vocab_size`); max_seq: the longest sequence.
    mrope_section: overrides `cfg.llm.mrope_section` (Qwen2-VL M-RoPE in the LLM, see `models.mrope`).
    """
    mrope_section = cfg.llm.mrope_section if mrope_section is None else mrope_section
    llm = build_llm(cfg.llm, parallel, vocab_size, max_seq, dtype, vp_stage=vp_stage, mrope_section=mrope_section)
    if cfg.vit is None:
        if cfg.connector is not None or cfg.contrastive is not None:
            raise ConfigError("model.connector / model.contrastive: need model.vit; set model.vit or drop them")
        return llm
    from omni_mega.models.omni import OmniModel

    conn_cfg = cfg.connector or ConnectorConfig()
    vit = connector = towers = None
    if ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage):
        vit, connector = _vision(cfg, conn_cfg, parallel, dtype)
        if cfg.contrastive is not None:  # ViT pre-training towers (objective: contrastive)
            from omni_mega.models.contrastive import ContrastiveTowers

            towers = ContrastiveTowers(cfg.contrastive, vit.out_features, cfg.contrastive.vocab_size or vocab_size,
                                       dtype)
    return OmniModel(llm, vit, connector, conn_cfg, cfg.vit.num_layers, cfg.vit.merge_size,
                     mrope=mrope_section is not None, towers=towers, contrastive=cfg.contrastive is not None)


def build_chunks(cfg: ModelConfig, parallel: ParallelConfig, vocab_size: int, max_seq: int,
                 dtype: torch.dtype) -> list:
    """Every model chunk this rank holds: one, or one per virtual pipeline stage (interleaved 1F1B)."""
    stages = [None] if parallel.vpp is None else list(range(parallel.vpp))
    return [build_model(cfg, parallel, vocab_size, max_seq, dtype, vp_stage=v) for v in stages]


def _vision(cfg: ModelConfig, conn: ConnectorConfig, parallel: ParallelConfig, dtype: torch.dtype):
    from omni_mega.models.vision.projector import Projector, projector_config
    from omni_mega.models.vision.visual_tokenizer import VisualTokenizer
    from omni_mega.models.vision.vit import VisionTransformer

    vit = VisionTransformer(cfg.vit, parallel, dtype)
    width = cfg.llm.hidden_size
    if conn.kind == "mlp":
        hidden = conn.projector_hidden_size or width
        if hidden % parallel.tp:
            raise ConfigError(f"model.connector.projector_hidden_size: {hidden} is not divisible by tp={parallel.tp}")
        return vit, Projector(vit.out_features, width, hidden, parallel, dtype)
    tcfg = projector_config(width, width, parallel, dtype, std=cfg.llm.init_method_std)
    return vit, VisualTokenizer(tcfg, vit.out_features, width, conn.visual_vocab_size, conn.num_indicators,
                                parallel.tp, dtype)
