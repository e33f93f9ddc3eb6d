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

    Text-only configs (no vit, audio, codec, talker, classifier) give a plain GPTModel; otherwise an OmniModel whose
    vision tower, connector and other parts exist only on the first pipeline stage (the first virtual chunk of
    pipeline rank 0).
    vocab_size: the padded LLM vocabulary (`models.llm.padded_vocab_size`); max_seq: the longest sequence.
    mrope_section: overrides `cfg.llm.mrope_section` (Qwen2-VL M-RoPE in the LLM, see `models.mrope`).
    """
    mrope_section = cfg.llm.mrope_section if mrope_section is None else mrope_section
    llm = build_llm(cfg.llm, parallel, vocab_size, max_seq, dtype, vp_stage=vp_stage, mrope_section=mrope_section)
    has_parts = any(getattr(cfg, p, None) is not None for p in PARTS)
    if cfg.vit is None and not has_parts:
        if cfg.connector is not None:
            raise ConfigError("model.connector: a connector needs model.vit; set model.vit or drop the connector")
        return llm
    from omni_mega.models.omni import OmniModel

    conn_cfg = cfg.connector or ConnectorConfig()
    vit = connector = None
    first = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if first and cfg.vit is not None:
        vit, connector = _vision(cfg, conn_cfg, parallel, dtype)
    parts = _parts(cfg, parallel, dtype, vit, vocab_size) if first else {}
    parts.update(audio_cfg=cfg.audio, talker_layers=cfg.talker.num_layers if cfg.talker is not None else 0,
                 contrastive=cfg.contrastive is not None)
    return OmniModel(llm, vit, connector, conn_cfg, cfg.vit.num_layers if cfg.vit is not None else 0,
                     cfg.vit.merge_size if cfg.vit is not None else 2, mrope=mrope_section is not None, parts=parts)


PARTS = ("audio", "codec", "talker", "classifier", "contrastive")  # optional parts beside the LLM and the vision tower


def _parts(cfg: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype, vit, vocab_size: int) -> dict:
    """The audio, speech, classifier and contrastive modules the config asks for (first pipeline stage only)."""
    out = {}
    if cfg.audio is not None:
        from omni_mega.models.audio.encoder import AudioEncoder
        from omni_mega.models.vision.projector import Projector

        a = cfg.audio
        hidden = a.projector_hidden_size or cfg.llm.hidden_size
        if hidden % parallel.tp:
            raise ConfigError(f"model.audio.projector_hidden_size: {hidden} is not divisible by tp={parallel.tp}")
        out["audio"] = AudioEncoder(a, parallel, dtype)
        out["ctc_head"] = torch.nn.Linear(a.hidden_size, a.ctc_vocab_size + 1, dtype=dtype)  # + the blank
        out["audio_projector"] = Projector(a.hidden_size, cfg.llm.hidden_size, hidden, parallel, dtype)
    if cfg.classifier is not None:
        if vit is None:
            raise ConfigError("model.classifier: an image classifier needs model.vit")
        from omni_mega.models.vision.classifier import ImageClassifier

        out["classifier"] = ImageClassifier(vit.out_features, len(cfg.classifier.labels), dtype)
    if cfg.contrastive is not None:  # the ViT's pre-training towers (objective: contrastive)
        if vit is None:
            raise ConfigError("model.contrastive: the contrastive towers pool the ViT's tokens; set model.vit")
        from omni_mega.models.contrastive import ContrastiveTowers

        out["towers"] = ContrastiveTowers(cfg.contrastive, vit.out_features, cfg.contrastive.vocab_size or vocab_size,
                                          dtype)
    if cfg.codec is not None:
        from omni_mega.models.speech.codec import RVQCodec

        out["codec"] = RVQCodec(cfg.codec, dtype)
    if cfg.talker is not None:
        if cfg.codec is None:
            raise ConfigError("model.talker: the Talker speaks codec codes; set model.codec")
        from omni_mega.models.speech.talker import Talker

        out["talker"] = Talker(cfg.talker, cfg.codec, parallel, dtype)
    return out


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
