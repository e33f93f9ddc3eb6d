"""The language model: megatron-core GPTModel built from our LLMConfig and ParallelConfig."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from omni_mega.config import ConfigError, LLMConfig, ParallelConfig, RopeScalingConfig
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


def rope_inv_freq(head_dim: int, base: float, scaling: RopeScalingConfig | None = None) -> tuple[torch.Tensor, float]:
    """(inv_freq float32 [head_dim / 2], attention factor) of RoPE with theta `base` and optional frequency scaling,
    with Hugging Face's formulas (`modeling_rope_utils`): plain theta^(-2i/d); `llama3` divides the low frequencies
    by `factor` and blends a band between; `yarn` ramps between interpolated and extrapolated frequencies and scales
    cos/sin by the attention factor (applied as a softmax scale, see `transformer_config`)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (float(base) ** exponent)
    if scaling is None:
        return inv_freq, 1.0
    factor, old = scaling.factor, scaling.original_max_position_embeddings
    if scaling.type == "llama3":
        low_wavelen, high_wavelen = old / scaling.low_freq_factor, old / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    # yarn
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = scaling.attention_factor
    if attn is None:
        attn = (mscale(factor, scaling.mscale) / mscale(factor, scaling.mscale_all_dim)
                if scaling.mscale and scaling.mscale_all_dim else mscale(factor))

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = float(base) ** (torch.arange(0, head_dim, 2).to(torch.float32) / head_dim)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, float(attn)


def set_rotary(model, base: float) -> int:
    """Writes RoPE frequencies for theta `base` into every rotary module of `model` (1D RoPE and M-RoPE), keeping
    the frequency scaling the model was built with (`build_llm` records it on the module), and clears megatron's
    cached embeddings. Returns the number of modules updated."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import (MultimodalRotaryEmbedding,
                                                                             RotaryEmbedding)

    mods = [m for m in model.modules() if isinstance(m, (RotaryEmbedding, MultimodalRotaryEmbedding))]
    for m in mods:
        dim = 2 * m.inv_freq.numel()
        inv, _ = rope_inv_freq(dim, base, getattr(m, "omni_rope_scaling", None))
        with torch.no_grad():
            m.inv_freq.copy_(inv.to(m.inv_freq.device))
    for kind in {type(m) for m in mods}:  # RotaryEmbedding.forward is an lru_cache keyed by (module, seq len)
        if hasattr(kind.forward, "cache_clear"):
            kind.forward.cache_clear()
    return len(mods)


def transformer_config(cfg: LLMConfig, parallel: ParallelConfig, dtype: torch.dtype) -> TransformerConfig:
    # Sequence parallelism without TE: `llm_layer_spec` uses SP-capable norms (models.vision.norms.SPNorm).
    te = probe().te
    cuda = torch.cuda.is_available()
    head_dim = cfg.head_dim
    _, attn_factor = rope_inv_freq(head_dim, cfg.rotary_base, cfg.rope_scaling)
    # YaRN scales cos and sin by the attention factor; RoPE is linear in q and k, so that equals multiplying the
    # attention logits by factor^2: a softmax scale, honoured by our core attention and TE's alike.
    softmax_scale = None if attn_factor == 1.0 else attn_factor ** 2 / math.sqrt(head_dim)
    kwargs = dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=ffn_size(cfg),
        kv_channels=head_dim,
        normalization=cfg.normalization,
        layernorm_epsilon=cfg.norm_epsilon,
        add_qkv_bias=cfg.add_qkv_bias,
        qk_layernorm=cfg.qk_layernorm,
        softmax_scale=softmax_scale,
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
    from omni_mega.models.moe import mla_config_kwargs, moe_config_kwargs

    kwargs.update(moe_config_kwargs(cfg, parallel))
    if not cfg.multi_latent_attention:
        return TransformerConfig(**kwargs)
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    return MLATransformerConfig(**{**kwargs, **mla_config_kwargs(cfg)})


def llm_layer_spec(cfg: LLMConfig, tcfg: TransformerConfig, vp_stage: int | None = None):
    """TransformerEngine's GPT layer spec when TE imports (GPU clusters); otherwise local TP linears with SP-capable
    norms and packed (THD-capable) causal attention (models.vision.attention), so SP and PackedSeqParams work on
    CPU. The backend is chosen by spec, never by branches inside the modules."""
    if cfg.num_moe_experts is not None or cfg.multi_latent_attention:
        # Mixture of experts and/or multi-latent attention: a spec per layer (dense and MoE layers differ).
        from omni_mega.models.moe import llm_block_spec

        return llm_block_spec(cfg, tcfg, vp_stage, te=probe().te)
    if probe().te:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        # TE fuses the input and pre-MLP norms into linear_qkv / linear_fc1 (layer_norm_weight); q/k norms are TENorm
        # modules named q_layernorm / k_layernorm, as in the local spec, so checkpoints carry the same keys.
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=cfg.qk_layernorm)
    from omni_mega.models.vision.attention import block_spec

    return block_spec(tcfg, causal=True, vp_stage=vp_stage, qk_layernorm=cfg.qk_layernorm)


def build_llm(cfg: LLMConfig, parallel: ParallelConfig, vocab_size: int, max_seq: int, dtype: torch.dtype,
              *, vp_stage: int | None = None, mrope_section: list[int] | None = None) -> GPTModel:
    """One GPTModel chunk for this pipeline rank (and virtual stage `vp_stage` when interleaved).

    mrope_section: (temporal, height, width) rotary pairs for Qwen2-VL's M-RoPE (sum = head_dim / 2); position_ids
    are then [3, b, s] (models.mrope.get_rope_index). None: plain 1D RoPE."""
    tcfg = transformer_config(cfg, parallel, dtype)
    if mrope_section is not None:
        head_dim = cfg.head_dim
        if sum(mrope_section) * 2 != head_dim:
            raise ConfigError(f"mrope_section {mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
        if cfg.rope_scaling is not None:
            raise ConfigError("model.llm.rope_scaling is not supported together with M-RoPE (mrope_section)")
        tcfg.mrope_section = list(mrope_section)
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=llm_layer_spec(cfg, tcfg, vp_stage),
        vocab_size=vocab_size,
        max_sequence_length=max_seq,
        pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=not cfg.untie_embeddings,
        rotary_base=float(cfg.rotary_base),  # megatron's int annotation aside, a float theta (e.g. 5e5) works
        vp_stage=vp_stage,
        # multi-latent attention keeps its own rotary module in every layer (GPTModel then builds none)
        position_embedding_type="rope" if mrope_section is None else "mrope",
    )
    # Frequencies with Hugging Face's formulas (and the optional llama3 / yarn scaling) replace megatron's, whose own
    # scaling hard-codes Llama-3.1's band constants; the scaling stays on the module so a stage that changes the
    # RoPE base (training.curriculum.set_rope_base) keeps it.
    for m in model.modules():
        if hasattr(m, "inv_freq") and isinstance(m.inv_freq, torch.Tensor):
            m.omni_rope_scaling = cfg.rope_scaling
    set_rotary(model, cfg.rotary_base)
    if cfg.num_moe_experts is not None:
        from omni_mega.models.moe import mark_expert_params

        mark_expert_params(model)
    return model
