"""The language model: megatron-core GPTModel built from our LLMConfig and ParallelConfig."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from omni_mega.config import ConfigError, LLMConfig, ParallelConfig
from omni_mega.runtime.capabilities import probe


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    """Vocabulary padded to a multiple of lcm(128, tp): divisible across TP ranks and tensor-core friendly.

    Megatron-LM pads to 128 * tp, which changes the embedding shape with the TP size; lcm(128, tp) equals 128 for
    every power-of-two tp <= 128, so a checkpoint keeps its shapes when it is loaded under another layout."""
    step = math.lcm(multiple, tp)
    return -(-vocab_size // step) * step


def ffn_size(cfg: LLMConfig) -> int:
    if cfg.ffn_hidden_size is not None:
        return cfg.ffn_hidden_size
    if cfg.activation == "swiglu":  # keeps the MLP's parameter count close to a 4h GELU MLP
        return 64 * ((8 * cfg.hidden_size // 3 + 63) // 64)
    return 4 * cfg.hidden_size


def transformer_config(cfg: LLMConfig, parallel: ParallelConfig, dtype: torch.dtype) -> TransformerConfig:
    # Sequence parallelism without TE: `llm_layer_spec` uses SP-capable norms (models.vision.norms.SPNorm).
    te = probe().te
    cuda = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=ffn_size(cfg),
        kv_channels=cfg.hidden_size // cfg.num_attention_heads,
        normalization=cfg.normalization,
        gated_linear_unit=cfg.activation == "swiglu",
        activation_func=F.silu if cfg.activation == "swiglu" else F.gelu,
        add_bias_linear=False,
        init_method_std=cfg.init_method_std,
        attention_dropout=cfg.attention_dropout,
        hidden_dropout=cfg.hidden_dropout,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        context_parallel_size=parallel.cp,
        sequence_parallel=parallel.sp,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        # Interleaved at pp=2: a rank's previous and next stage are the same peer, and megatron's batched p2p
        # (one batch_isend_irecv, ops matched in posting order) crosses the activation and the gradient in the
        # steady-state exchange (Megatron-LM #750, #1450). Unbatched p2p posts them in even/odd order on two groups.
        batch_p2p_comm=not (parallel.vpp is not None and parallel.pp == 2),
        bf16=dtype == torch.bfloat16,
        # CPU: initialise on the host and avoid fused CUDA kernels; GPU: the fast paths.
        use_cpu_initialization=not cuda,
        bias_dropout_fusion=cuda,
        apply_rope_fusion=cuda and te,
        masked_softmax_fusion=cuda,
        gradient_accumulation_fusion=False,
        persist_layer_norm=cuda,
        attention_softmax_in_fp32=True,
    )


def llm_layer_spec(cfg: LLMConfig, tcfg: TransformerConfig, vp_stage: int | None = None):
    """TransformerEngine's GPT layer spec when TE imports (GPU clusters); otherwise local TP linears with SP-capable
    norms and packed (THD-capable) causal attention (models.vision.attention), so SP and PackedSeqParams work on
    CPU. The backend is chosen by spec, never by branches inside the modules."""
    if probe().te:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    from omni_mega.models.vision.attention import block_spec

    return block_spec(tcfg, causal=True, vp_stage=vp_stage)


def build_llm(cfg: LLMConfig, parallel: ParallelConfig, vocab_size: int, max_seq: int, dtype: torch.dtype,
              *, vp_stage: int | None = None, mrope_section: list[int] | None = None) -> GPTModel:
    """One GPTModel chunk for this pipeline rank (and virtual stage `vp_stage` when interleaved).

    mrope_section: (temporal, height, width) rotary pairs for Qwen2-VL's M-RoPE (sum = head_dim / 2); position_ids
    are then [3, b, s] (models.mrope.get_rope_index). None: plain 1D RoPE."""
    tcfg = transformer_config(cfg, parallel, dtype)
    if mrope_section is not None:
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        if sum(mrope_section) * 2 != head_dim:
            raise ConfigError(f"mrope_section {mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
        tcfg.mrope_section = list(mrope_section)
    return GPTModel(
        config=tcfg,
        transformer_layer_spec=llm_layer_spec(cfg, tcfg, vp_stage),
        vocab_size=vocab_size,
        max_sequence_length=max_seq,
        pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=not cfg.untie_embeddings,
        rotary_base=int(cfg.rotary_base),
        vp_stage=vp_stage,
        position_embedding_type="rope" if mrope_section is None else "mrope",
    )
