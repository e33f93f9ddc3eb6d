"""Llama-style decoders (Llama, Mistral, Qwen2, Qwen3): the tensor table and the config translation, RoPE scaling
included."""

from __future__ import annotations

import math

from omni_mega.config import LLMConfig, ModelConfig, RopeScalingConfig
from omni_mega.interop import transforms as T
from omni_mega.interop.arch.base import Rule, Stack, need
from omni_mega.interop.errors import InteropError

_L = "decoder.layers.{i}."
_A = "layers.{i}.self_attn."
DECODER_RULES = (  # dims: V vocab, h width, q = heads x head_dim, kv = groups x head_dim, d head_dim, F MLP width
    Rule("embedding.word_embeddings.weight", ("embed_tokens.weight",), ("V,h",), "vocab"),
    Rule(_L + "self_attention.linear_qkv.layer_norm_weight", ("layers.{i}.input_layernorm.weight",), ("h",)),
    Rule(_L + "self_attention.linear_qkv.weight", (_A + "q_proj.weight", _A + "k_proj.weight", _A + "v_proj.weight"),
         ("q,h", "kv,h", "kv,h"), "qkv"),
    Rule(_L + "self_attention.linear_qkv.bias", (_A + "q_proj.bias", _A + "k_proj.bias", _A + "v_proj.bias"),
         ("q", "kv", "kv"), "qkv", when="add_qkv_bias"),
    Rule(_L + "self_attention.q_layernorm.weight", (_A + "q_norm.weight",), ("d",), when="qk_layernorm"),
    Rule(_L + "self_attention.k_layernorm.weight", (_A + "k_norm.weight",), ("d",), when="qk_layernorm"),
    Rule(_L + "self_attention.linear_proj.weight", (_A + "o_proj.weight",), ("h,q",)),
    Rule(_L + "mlp.linear_fc1.layer_norm_weight", ("layers.{i}.post_attention_layernorm.weight",), ("h",)),
    Rule(_L + "mlp.linear_fc1.weight", ("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.up_proj.weight"),
         ("F,h", "F,h"), "gate_up"),
    Rule(_L + "mlp.linear_fc2.weight", ("layers.{i}.mlp.down_proj.weight",), ("h,F",)),
    Rule("decoder.final_layernorm.weight", ("norm.weight",), ("h",)),
    Rule("output_layer.weight", ("@lm_head.weight",), ("V,h",), "vocab", when="untie_embeddings"),
)


def rope_of(text: dict) -> tuple[float, RopeScalingConfig | None, list[int] | None]:
    """(theta, scaling, mrope_section) from `rope_parameters` (transformers v5) and/or `rope_theta` + `rope_scaling`
    (earlier releases)."""
    params = {**(text.get("rope_scaling") or {}), **(text.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", text.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    mrope = params.get("mrope_section")
    if kind in ("default", "mrope"):
        return theta, None, list(mrope) if mrope else None
    maxpos = text.get("max_position_embeddings")
    if kind == "llama3":
        return theta, RopeScalingConfig(
            type="llama3", factor=float(params["factor"]), low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192))), None
    if kind == "yarn":
        factor = float(params["factor"])
        orig = params.get("original_max_position_embeddings") or (int(maxpos / factor) if maxpos else None)
        if orig is None:
            raise InteropError("config.json: yarn RoPE scaling without original_max_position_embeddings")
        return theta, RopeScalingConfig(
            type="yarn", factor=factor, original_max_position_embeddings=int(orig),
            beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
            attention_factor=params.get("attention_factor"), mscale=params.get("mscale"),
            mscale_all_dim=params.get("mscale_all_dim"), truncate=bool(params.get("truncate", True))), None
    raise InteropError(f"config.json: RoPE type {kind!r} is not supported (supported: default, llama3, yarn, mrope)")


def rope_to_hf(llm: LLMConfig, mrope: list[int] | None = None) -> dict:
    """Legacy `rope_theta` + `rope_scaling`: what released checkpoints carry; transformers v5 reads it too."""
    out: dict = {"rope_theta": llm.rotary_base}
    s = llm.rope_scaling
    if mrope is not None:
        out["rope_scaling"] = {"type": "mrope", "rope_type": "default", "mrope_section": list(mrope)}
    elif s is not None and s.type == "llama3":
        out["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings": s.original_max_position_embeddings}
    elif s is not None:
        out["rope_scaling"] = {k: v for k, v in {
            "rope_type": "yarn", "factor": s.factor, "original_max_position_embeddings": s.original_max_position_embeddings,
            "beta_fast": s.beta_fast, "beta_slow": s.beta_slow, "attention_factor": s.attention_factor,
            "mscale": s.mscale, "mscale_all_dim": s.mscale_all_dim, "truncate": s.truncate}.items() if v is not None}
    return out


def decoder_llm(text: dict, *, qkv_bias: bool, qk_norm: bool, arch: str) -> LLMConfig:
    """LLMConfig of a Llama-style decoder (Llama, Mistral, Qwen2, Qwen3)."""
    act = text.get("hidden_act", "silu")
    if act != "silu":
        raise InteropError(f"config.json: hidden_act {act!r} is not supported for {arch} (SwiGLU with silu only)")
    if text.get("mlp_bias"):
        raise InteropError(f"config.json: mlp_bias=true is not supported for {arch}")
    if text.get("attention_bias") and not qkv_bias:
        raise InteropError(f"config.json: attention_bias=true ({arch}: biases on q/k/v and the output projection) is "
                           "not supported; only q/k/v biases are")
    h, heads = int(need(text, "hidden_size")), int(need(text, "num_attention_heads"))
    head_dim = text.get("head_dim")
    theta, scaling, _ = rope_of(text)
    return LLMConfig(
        num_layers=int(need(text, "num_hidden_layers")), hidden_size=h, num_attention_heads=heads,
        num_query_groups=int(text.get("num_key_value_heads") or heads),
        kv_channels=int(head_dim) if head_dim and (h % heads or int(head_dim) != h // heads) else None,
        ffn_hidden_size=int(need(text, "intermediate_size")), vocab_size=int(need(text, "vocab_size")),
        max_position_embeddings=int(text.get("max_position_embeddings") or 4096), rotary_base=theta,
        rope_scaling=scaling, normalization="RMSNorm", norm_epsilon=float(text.get("rms_norm_eps", 1e-6)),
        activation="swiglu", add_qkv_bias=qkv_bias, qk_layernorm=qk_norm,
        untie_embeddings=not bool(text.get("tie_word_embeddings", False)),
        init_method_std=float(text.get("initializer_range", 0.02)),
    )


def ffn_width(llm: LLMConfig) -> int:
    """`models.llm.ffn_size`, restated so conversions never import megatron (tests/interop holds them equal)."""
    if llm.ffn_hidden_size is not None:
        return llm.ffn_hidden_size
    return 64 * ((8 * llm.hidden_size // 3 + 63) // 64) if llm.activation == "swiglu" else 4 * llm.hidden_size


def padded_vocab(vocab: int, tp: int = 1, multiple: int = 128) -> int:
    """`models.llm.padded_vocab_size`, restated so conversions never import megatron."""
    step = math.lcm(multiple, tp)
    return -(-vocab // step) * step


def decoder_hf(llm: LLMConfig, vocab: int) -> dict:
    return {
        "hidden_size": llm.hidden_size, "intermediate_size": ffn_width(llm),
        "num_hidden_layers": llm.num_layers, "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_query_groups or llm.num_attention_heads, "head_dim": llm.head_dim,
        "hidden_act": "silu", "rms_norm_eps": llm.norm_epsilon, "vocab_size": vocab,
        "max_position_embeddings": llm.max_position_embeddings, "tie_word_embeddings": not llm.untie_embeddings,
        "initializer_range": llm.init_method_std, **rope_to_hf(llm),
    }


def decoder_stack(cfg: ModelConfig, padded_vocab: int, prefixes: tuple[str, ...], mcore_prefix: str = "") -> Stack:
    llm = cfg.llm
    groups = llm.num_query_groups or llm.num_attention_heads
    return Stack(DECODER_RULES, prefixes, mcore_prefix, llm.num_layers,
                 flags={"add_qkv_bias": llm.add_qkv_bias, "qk_layernorm": llm.qk_layernorm,
                        "untie_embeddings": llm.untie_embeddings},
                 transforms={"copy": T.copy(), "qkv": T.qkv_per_group(llm.num_attention_heads, groups, llm.head_dim),
                             "gate_up": T.gate_up(), "vocab": T.pad_rows(llm.vocab_size, padded_vocab)},
                 dims={"V": llm.vocab_size, "h": llm.hidden_size, "q": llm.num_attention_heads * llm.head_dim,
                       "kv": groups * llm.head_dim, "d": llm.head_dim, "F": ffn_width(llm)})


def mrope_decoder(text: dict, arch: str) -> LLMConfig:
    """The Qwen2 decoder of a Qwen2-VL / Qwen2.5-VL model: q/k/v biases and M-RoPE (its `mrope_section`)."""
    llm = decoder_llm(text, qkv_bias=True, qk_norm=False, arch=arch)
    _, _, mrope = rope_of(text)
    if mrope is None:
        raise InteropError(f"config.json: {arch} needs rope_scaling/rope_parameters.mrope_section")
    llm.mrope_section = list(mrope)
    llm.__post_init__()
    return llm
