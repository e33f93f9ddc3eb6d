"""Architecture families as data: how a Hugging Face config.json becomes our model config (and back), and a table of
megatron checkpoint key <-> Hugging Face tensor names with a named transform per row (`interop.transforms`).

A new architecture is a new table plus its config translation; the converters (`interop.convert`) only walk tables.
Templates: `{i}` is a layer index; HF names are relative to the stack's HF prefix (`model.` for a decoder,
`visual.` for Qwen2-VL's vision tower), except names starting with `@`, which are absolute (`lm_head.weight`).
Megatron keys follow TransformerEngine's layout (input / pre-MLP norms inside linear_qkv / linear_fc1), which our
local spec writes too (`models.vision.attention.layer_spec`), with one key per layer (`training.checkpoint`'s
non-homogeneous layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from omni_mega.config import ConnectorConfig, LLMConfig, ModelConfig, RopeScalingConfig, ViTConfig
from omni_mega.interop import transforms as T
from omni_mega.interop.errors import InteropError


@dataclass(frozen=True)
class Rule:
    mcore: str  # megatron checkpoint key (template)
    hf: tuple[str, ...]  # Hugging Face tensor names (templates), the transform's inputs in order
    shapes: tuple[str, ...] = ()  # expected HF shape of each input, as dims of the stack ("q,h": q rows, h columns)
    transform: str = "copy"  # a name the stack's transform factory knows
    when: str | None = None  # only when this flag of the stack's config is true (e.g. add_qkv_bias)


# ---- the tables -----------------------------------------------------------------------------------------------------
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

_V = "block.layers.{i}."
_B = "blocks.{i}."
QWEN2VL_VISION_RULES = (  # dims: E width, F MLP width, M = E x merge^2, h the LLM width, patch = C,t,p,p
    Rule("vit.patch_embed.weight", ("patch_embed.proj.weight",), ("E,C,t,p,p",), "patch"),
    Rule("vit." + _V + "self_attention.linear_qkv.layer_norm_weight", (_B + "norm1.weight",), ("E",)),
    Rule("vit." + _V + "self_attention.linear_qkv.layer_norm_bias", (_B + "norm1.bias",), ("E",)),
    Rule("vit." + _V + "self_attention.linear_qkv.weight", (_B + "attn.qkv.weight",), ("E3,E",), "fused_qkv"),
    Rule("vit." + _V + "self_attention.linear_qkv.bias", (_B + "attn.qkv.bias",), ("E3",), "fused_qkv"),
    Rule("vit." + _V + "self_attention.linear_proj.weight", (_B + "attn.proj.weight",), ("E,E",)),
    Rule("vit." + _V + "self_attention.linear_proj.bias", (_B + "attn.proj.bias",), ("E",)),
    Rule("vit." + _V + "mlp.linear_fc1.layer_norm_weight", (_B + "norm2.weight",), ("E",)),
    Rule("vit." + _V + "mlp.linear_fc1.layer_norm_bias", (_B + "norm2.bias",), ("E",)),
    Rule("vit." + _V + "mlp.linear_fc1.weight", (_B + "mlp.fc1.weight",), ("F,E",)),
    Rule("vit." + _V + "mlp.linear_fc1.bias", (_B + "mlp.fc1.bias",), ("F",)),
    Rule("vit." + _V + "mlp.linear_fc2.weight", (_B + "mlp.fc2.weight",), ("E,F",)),
    Rule("vit." + _V + "mlp.linear_fc2.bias", (_B + "mlp.fc2.bias",), ("E",)),
    # The merger's per-patch LayerNorm (ln_q) is our ViT's final norm: both normalise every patch before the merge.
    Rule("vit.block.final_layernorm.weight", ("merger.ln_q.weight",), ("E",)),
    Rule("vit.block.final_layernorm.bias", ("merger.ln_q.bias",), ("E",)),
    # The merger's MLP (Linear 4h->4h, GELU, Linear 4h->d) is our LLaVA projector with a 4h hidden width.
    Rule("connector.mlp.linear_fc1.weight", ("merger.mlp.0.weight",), ("M,M",)),
    Rule("connector.mlp.linear_fc1.bias", ("merger.mlp.0.bias",), ("M",)),
    Rule("connector.mlp.linear_fc2.weight", ("merger.mlp.2.weight",), ("h,M",)),
    Rule("connector.mlp.linear_fc2.bias", ("merger.mlp.2.bias",), ("h",)),
)


_S = "encoder.layers.{i}."
SIGLIP_VISION_RULES = (  # dims: E width, F MLP width, G2 = position-table rows, patch = E,C,p,p
    Rule("vit.patch_embed.weight", ("embeddings.patch_embedding.weight",), ("E,C,p,p",), "patch"),
    Rule("vit.patch_embed.bias", ("embeddings.patch_embedding.bias",), ("E",)),
    Rule("vit.pos_embed.table", ("embeddings.position_embedding.weight",), ("G2,E",)),
    Rule("vit." + _V + "self_attention.linear_qkv.layer_norm_weight", (_S + "layer_norm1.weight",), ("E",)),
    Rule("vit." + _V + "self_attention.linear_qkv.layer_norm_bias", (_S + "layer_norm1.bias",), ("E",)),
    Rule("vit." + _V + "self_attention.linear_qkv.weight", (_S + "self_attn.q_proj.weight", _S + "self_attn.k_proj.weight",
                                                             _S + "self_attn.v_proj.weight"), ("E,E", "E,E", "E,E"), "qkv"),
    Rule("vit." + _V + "self_attention.linear_qkv.bias", (_S + "self_attn.q_proj.bias", _S + "self_attn.k_proj.bias",
                                                           _S + "self_attn.v_proj.bias"), ("E", "E", "E"), "qkv"),
    Rule("vit." + _V + "self_attention.linear_proj.weight", (_S + "self_attn.out_proj.weight",), ("E,E",)),
    Rule("vit." + _V + "self_attention.linear_proj.bias", (_S + "self_attn.out_proj.bias",), ("E",)),
    Rule("vit." + _V + "mlp.linear_fc1.layer_norm_weight", (_S + "layer_norm2.weight",), ("E",)),
    Rule("vit." + _V + "mlp.linear_fc1.layer_norm_bias", (_S + "layer_norm2.bias",), ("E",)),
    Rule("vit." + _V + "mlp.linear_fc1.weight", (_S + "mlp.fc1.weight",), ("F,E",)),
    Rule("vit." + _V + "mlp.linear_fc1.bias", (_S + "mlp.fc1.bias",), ("F",)),
    Rule("vit." + _V + "mlp.linear_fc2.weight", (_S + "mlp.fc2.weight",), ("E,F",)),
    Rule("vit." + _V + "mlp.linear_fc2.bias", (_S + "mlp.fc2.bias",), ("E",)),
    Rule("vit.block.final_layernorm.weight", ("post_layernorm.weight",), ("E",)),
    Rule("vit.block.final_layernorm.bias", ("post_layernorm.bias",), ("E",)),
)


@dataclass(frozen=True)
class Stack:
    """One part of a model under one HF prefix: its rules, its layer count and the transforms its rules name."""

    rules: tuple[Rule, ...]
    hf_prefixes: tuple[str, ...]  # accepted on import, first one written on export
    mcore_prefix: str
    layers: int
    flags: dict = field(default_factory=dict)
    transforms: dict[str, T.Transform] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Mapping:
    """One resolved row: megatron key <- HF names through a transform."""

    mcore: str
    hf: tuple[str, ...]
    transform: T.Transform
    shapes: tuple[tuple[int, ...], ...]  # expected HF shapes


def expand(stack: Stack, hf_prefix: str) -> list[Mapping]:
    out = []
    for r in stack.rules:
        if r.when is not None and not stack.flags.get(r.when, False):
            continue
        layers = range(stack.layers) if "{i}" in r.mcore else [None]
        for i in layers:
            fmt = (lambda s: s.format(i=i)) if i is not None else (lambda s: s)
            hf = tuple(n[1:] if n.startswith("@") else hf_prefix + fmt(n) for n in r.hf)
            shapes = tuple(tuple(stack.dims[d] for d in spec.split(",")) for spec in r.shapes)
            out.append(Mapping(stack.mcore_prefix + fmt(r.mcore), tuple(fmt(n) for n in hf),
                               stack.transforms[r.transform], shapes))
    return out


# ---- config translation ---------------------------------------------------------------------------------------------
def _text(hf: dict) -> dict:
    """The language model's fields: `text_config` (transformers v5 layout of VLMs) or the top level."""
    return {**hf, **(hf.get("text_config") or {})}


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


def _rope_to_hf(llm: LLMConfig, mrope: list[int] | None = None) -> dict:
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


def _need(d: dict, key: str, where: str = "config.json"):
    if key not in d or d[key] is None:
        raise InteropError(f"{where}: missing {key!r}")
    return d[key]


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
    h, heads = int(_need(text, "hidden_size")), int(_need(text, "num_attention_heads"))
    head_dim = text.get("head_dim")
    theta, scaling, _ = rope_of(text)
    return LLMConfig(
        num_layers=int(_need(text, "num_hidden_layers")), hidden_size=h, num_attention_heads=heads,
        num_query_groups=int(text.get("num_key_value_heads") or heads),
        kv_channels=int(head_dim) if head_dim and (h % heads or int(head_dim) != h // heads) else None,
        ffn_hidden_size=int(_need(text, "intermediate_size")), vocab_size=int(_need(text, "vocab_size")),
        max_position_embeddings=int(text.get("max_position_embeddings") or 4096), rotary_base=theta,
        rope_scaling=scaling, normalization="RMSNorm", norm_epsilon=float(text.get("rms_norm_eps", 1e-6)),
        activation="swiglu", add_qkv_bias=qkv_bias, qk_layernorm=qk_norm,
        untie_embeddings=not bool(text.get("tie_word_embeddings", False)),
        init_method_std=float(text.get("initializer_range", 0.02)),
    )


def _ffn(llm: LLMConfig) -> int:
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
        "hidden_size": llm.hidden_size, "intermediate_size": _ffn(llm),
        "num_hidden_layers": llm.num_layers, "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_query_groups or llm.num_attention_heads, "head_dim": llm.head_dim,
        "hidden_act": "silu", "rms_norm_eps": llm.norm_epsilon, "vocab_size": vocab,
        "max_position_embeddings": llm.max_position_embeddings, "tie_word_embeddings": not llm.untie_embeddings,
        "initializer_range": llm.init_method_std, **_rope_to_hf(llm),
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
                       "kv": groups * llm.head_dim, "d": llm.head_dim, "F": _ffn(llm)})


# ---- Qwen2-VL vision -----------------------------------------------------------------------------------------------
def qwen2vl_vision(v: dict, llm_width: int) -> tuple[ViTConfig, ConnectorConfig]:
    act = v.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise InteropError(f"config.json: vision_config.hidden_act {act!r} is not supported (quick_gelu, gelu)")
    embed = int(_need(v, "embed_dim", "config.json vision_config"))
    heads = int(_need(v, "num_heads", "config.json vision_config"))
    merge = int(v.get("spatial_merge_size", 2))
    theta = float((v.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    vit = ViTConfig(num_layers=int(_need(v, "depth", "config.json vision_config")), hidden_size=embed,
                    num_attention_heads=heads, patch_size=int(v.get("patch_size", 14)),
                    temporal_patch_size=int(v.get("temporal_patch_size", 2)), merge_size=merge,
                    in_channels=int(v.get("in_channels", 3)), ffn_hidden_size=int(embed * v.get("mlp_ratio", 4)),
                    normalization="LayerNorm", norm_epsilon=1e-6, activation=act, rope_theta=theta,
                    rope_layout="half", pos_embed_grid=0, init_method_std=float(v.get("initializer_range", 0.02)))
    out = int(v.get("hidden_size", llm_width))
    if out != llm_width:
        raise InteropError(f"config.json: vision_config.hidden_size {out} (the merger's output) differs from the "
                           f"language model's hidden_size {llm_width}")
    return vit, ConnectorConfig(kind="mlp", projector_hidden_size=embed * merge * merge)


def _ratio(a: int, b: int) -> int | float:
    return a // b if a % b == 0 else a / b  # transformers' config validation wants an int when it is one


def qwen2vl_vision_hf(vit: ViTConfig, llm_width: int) -> dict:
    return {"depth": vit.num_layers, "embed_dim": vit.hidden_size, "hidden_size": llm_width,
            "hidden_act": vit.activation, "mlp_ratio": _ratio(vit.ffn_hidden_size or 4 * vit.hidden_size, vit.hidden_size),
            "num_heads": vit.num_attention_heads, "in_channels": vit.in_channels, "patch_size": vit.patch_size,
            "spatial_merge_size": vit.merge_size, "temporal_patch_size": vit.temporal_patch_size,
            "initializer_range": vit.init_method_std}


def qwen2vl_vision_stack(cfg: ModelConfig, prefixes: tuple[str, ...]) -> Stack:
    vit = cfg.vit
    d = vit.hidden_size // vit.num_attention_heads
    shape = (vit.hidden_size, vit.in_channels, vit.temporal_patch_size, vit.patch_size, vit.patch_size)
    return Stack(QWEN2VL_VISION_RULES, prefixes, "", vit.num_layers,
                 transforms={"copy": T.copy(), "fused_qkv": T.fused_qkv_per_head(vit.num_attention_heads, d),
                             "patch": T.conv_as_linear(shape)},
                 dims={"E": vit.hidden_size, "E3": 3 * vit.hidden_size, "F": vit.ffn_hidden_size or 4 * vit.hidden_size,
                       "M": vit.hidden_size * vit.merge_size**2, "h": cfg.llm.hidden_size, "C": vit.in_channels,
                       "t": vit.temporal_patch_size, "p": vit.patch_size})


def check_qwen2vl_vision(cfg: ModelConfig) -> None:
    """Raises InteropError unless our vision side is expressible as Qwen2-VL's tower + merger."""
    vit, conn = cfg.vit, cfg.connector or ConnectorConfig()
    problems = []
    if vit.normalization != "LayerNorm":
        problems.append("model.vit.normalization must be LayerNorm")
    if vit.activation not in ("quick_gelu", "gelu"):
        problems.append("model.vit.activation must be quick_gelu or gelu")
    if vit.pos_embed_grid:
        problems.append("model.vit.pos_embed_grid must be 0 (Qwen2-VL uses 2D RoPE only)")
    if vit.rope_layout != "half":
        problems.append("model.vit.rope_layout must be half")
    if conn.kind != "mlp" or (conn.projector_hidden_size or cfg.llm.hidden_size) != vit.hidden_size * vit.merge_size**2:
        problems.append("model.connector must be kind mlp with projector_hidden_size = vit hidden x merge^2")
    if cfg.llm.mrope_section is None:
        problems.append("model.llm.mrope_section must be set (Qwen2-VL's M-RoPE)")
    if problems:
        raise InteropError("this model has no Qwen2VLForConditionalGeneration equivalent: " + "; ".join(problems))


# ---- SigLIP vision tower ---------------------------------------------------------------------------------------------
def siglip_vision(v: dict) -> ViTConfig:
    act = v.get("hidden_act", "gelu_pytorch_tanh")
    acts = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
    if act not in acts:
        raise InteropError(f"config.json: SigLIP hidden_act {act!r} is not supported ({', '.join(acts)})")
    image, patch = int(v.get("image_size", 224)), int(v.get("patch_size", 16))  # the conv floors: 384 / 14 -> 27
    h = int(_need(v, "hidden_size"))
    return ViTConfig(num_layers=int(_need(v, "num_hidden_layers")), hidden_size=h,
                     num_attention_heads=int(_need(v, "num_attention_heads")), patch_size=patch,
                     temporal_patch_size=1, merge_size=1, in_channels=int(v.get("num_channels", 3)),
                     ffn_hidden_size=int(_need(v, "intermediate_size")), normalization="LayerNorm",
                     norm_epsilon=float(v.get("layer_norm_eps", 1e-6)), activation=acts[act], rope_layout="none",
                     pos_embed_grid=image // patch, patch_bias=True)


def siglip_vision_hf(vit: ViTConfig) -> dict:
    acts = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
    if vit.activation not in acts or vit.normalization != "LayerNorm" or not vit.pos_embed_grid or not vit.patch_bias \
            or vit.temporal_patch_size != 1:
        raise InteropError("this ViT has no SiglipVisionModel equivalent (needs LayerNorm, a GELU activation, a "
                           "learned position table, a patch bias and temporal_patch_size 1)")
    return {"hidden_size": vit.hidden_size, "intermediate_size": vit.ffn_hidden_size or 4 * vit.hidden_size,
            "num_hidden_layers": vit.num_layers, "num_attention_heads": vit.num_attention_heads,
            "num_channels": vit.in_channels, "patch_size": vit.patch_size,
            "image_size": vit.patch_size * vit.pos_embed_grid, "layer_norm_eps": vit.norm_epsilon,
            "hidden_act": acts[vit.activation], "vision_use_head": False}


def siglip_vision_stack(cfg: ModelConfig, prefixes: tuple[str, ...]) -> Stack:
    vit = cfg.vit
    d = vit.hidden_size // vit.num_attention_heads
    shape = (vit.hidden_size, vit.in_channels, vit.patch_size, vit.patch_size)
    return Stack(SIGLIP_VISION_RULES, prefixes, "", vit.num_layers,
                 transforms={"copy": T.copy(), "patch": T.conv_as_linear(shape),
                             "qkv": T.qkv_per_group(vit.num_attention_heads, vit.num_attention_heads, d)},
                 dims={"E": vit.hidden_size, "F": vit.ffn_hidden_size or 4 * vit.hidden_size,
                       "G2": vit.pos_embed_grid ** 2, "C": vit.in_channels, "p": vit.patch_size})


@dataclass(frozen=True)
class VisionFamily:
    """A vision tower alone: its checkpoint holds only `vit.*` keys (for `init_from: {vit: hf:...}`); the model
    config records the tower, with a default language model that nothing loads into."""

    architecture: str
    model_type: str
    vision_only = True
    # tensors of the folder that are not the tower (SiglipModel's text half, the pooling head)
    ignored_prefixes: tuple[str, ...] = ("head.", "vision_model.head.", "text_model.", "logit_")

    def to_config(self, hf: dict) -> ModelConfig:
        v = hf.get("vision_config") or hf
        return ModelConfig(llm=LLMConfig(), vit=siglip_vision(v), connector=None)

    def stacks(self, cfg: ModelConfig, padded_vocab: int | None = None) -> list[Stack]:
        return [siglip_vision_stack(cfg, ("", "vision_model."))]

    def to_hf_config(self, cfg: ModelConfig, vocab: int | None, dtype: str, base: dict | None) -> dict:
        base = base or {}
        out = {k: v for k, v in {**base, **(base.get("vision_config") or {})}.items()
               if k not in ("text_config", "vision_config")}
        out.update(siglip_vision_hf(cfg.vit))
        old = (base.get("vision_config") or base).get("image_size")
        if old and int(old) // cfg.vit.patch_size == cfg.vit.pos_embed_grid:  # e.g. 384 at patch 14 (grid 27)
            out["image_size"] = old
        out.update({"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model", "dtype": dtype})
        return out


# ---- families -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    architecture: str  # HF class name
    model_type: str
    qkv_bias: bool
    qk_norm: bool
    vision: bool = False
    vision_only = False
    ignored_prefixes: tuple[str, ...] = ()

    def to_config(self, hf: dict) -> ModelConfig:
        text = _text(hf)
        llm = decoder_llm(text, qkv_bias=self.qkv_bias, qk_norm=self.qk_norm, arch=self.architecture)
        if not self.vision:
            return ModelConfig(llm=llm)
        _, _, mrope = rope_of(text)
        if mrope is None:
            raise InteropError("config.json: Qwen2-VL needs rope_scaling/rope_parameters.mrope_section")
        llm.mrope_section = list(mrope)
        llm.__post_init__()
        vit, conn = qwen2vl_vision(_need(hf, "vision_config"), llm.hidden_size)
        conn.image_token_id = int(_need(hf, "image_token_id"))
        return ModelConfig(llm=llm, vit=vit, connector=conn)

    def stacks(self, cfg: ModelConfig, padded_vocab: int) -> list[Stack]:
        if not self.vision:
            return [decoder_stack(cfg, padded_vocab, ("model.",))]
        return [decoder_stack(cfg, padded_vocab, ("model.", "model.language_model."), "llm."),
                qwen2vl_vision_stack(cfg, ("visual.", "model.visual."))]

    def to_hf_config(self, cfg: ModelConfig, vocab: int, dtype: str, base: dict | None) -> dict:
        text = decoder_hf(cfg.llm, vocab)
        if self.model_type in ("llama", "mistral"):
            text["attention_bias"] = False
            text["mlp_bias"] = False
        if self.model_type == "qwen3":
            text["attention_bias"] = False
        if self.model_type in ("qwen2", "qwen3", "mistral"):
            text.setdefault("sliding_window", None)
            text["use_sliding_window"] = False
        base = base or {}
        out = {k: v for k, v in base.items() if k not in ("rope_parameters", "text_config")}
        # transformers v5 nests a VLM's text fields (token ids, ...); the flat layout below is what releases carry
        out.update({k: v for k, v in (base.get("text_config") or {}).items()
                    if k not in ("rope_parameters", "model_type", "architectures")})
        if self.vision:
            check_qwen2vl_vision(cfg)
            text.update(_rope_to_hf(cfg.llm, cfg.llm.mrope_section))
            out.update(text)
            out["vision_config"] = {**base.get("vision_config", {}), **qwen2vl_vision_hf(cfg.vit,
                                                                                               cfg.llm.hidden_size)}
            img = (cfg.connector or ConnectorConfig()).image_token_id
            if not 0 <= img < vocab:
                raise InteropError(f"model.connector.image_token_id {img} is not a token of the {vocab}-token "
                                   "vocabulary; Qwen2-VL needs a real image token id")
            out["image_token_id"] = img
        else:
            out.update(text)
        out.update({"architectures": [self.architecture], "model_type": self.model_type, "dtype": dtype})
        return out


FAMILIES = {f.architecture: f for f in (
    Family("LlamaForCausalLM", "llama", qkv_bias=False, qk_norm=False),
    Family("MistralForCausalLM", "mistral", qkv_bias=False, qk_norm=False),
    Family("Qwen2ForCausalLM", "qwen2", qkv_bias=True, qk_norm=False),
    Family("Qwen3ForCausalLM", "qwen3", qkv_bias=False, qk_norm=True),
    Family("Qwen2VLForConditionalGeneration", "qwen2_vl", qkv_bias=True, qk_norm=False, vision=True),
    VisionFamily("SiglipVisionModel", "siglip_vision_model"),
    VisionFamily("SiglipModel", "siglip"),  # its vision tower (the text tower is not imported)
)}


def family_of(hf: dict) -> Family:
    archs = hf.get("architectures") or []
    for a in archs:
        if a in FAMILIES:
            return FAMILIES[a]
    raise InteropError(f"config.json: architecture {archs or hf.get('model_type')!r} is not supported; supported: "
                       + ", ".join(FAMILIES))


def family_for(cfg: ModelConfig) -> Family:
    """The HF architecture that expresses a model trained here (no HF origin recorded)."""
    llm = cfg.llm
    if getattr(llm, "num_moe_experts", None) is not None or getattr(llm, "multi_latent_attention", False):
        raise InteropError("export of mixture-of-experts or multi-latent-attention language models (DeepSeek-V3 / "
                           "Moonlight layout) is not supported yet")
    if llm.normalization != "RMSNorm" or llm.activation != "swiglu":
        raise InteropError("no supported Hugging Face architecture has this language model: export needs RMSNorm and "
                           f"SwiGLU, the model has {llm.normalization} and {llm.activation}")
    if cfg.vit is not None:
        fam = FAMILIES["Qwen2VLForConditionalGeneration"]
        check_qwen2vl_vision(cfg)
        if not llm.add_qkv_bias or llm.qk_layernorm:
            raise InteropError("Qwen2VLForConditionalGeneration needs model.llm.add_qkv_bias=true and no qk_layernorm")
        return fam
    if llm.qk_layernorm:
        if llm.add_qkv_bias:
            raise InteropError("no supported architecture has both q/k/v biases and q/k norms")
        return FAMILIES["Qwen3ForCausalLM"]
    return FAMILIES["Qwen2ForCausalLM" if llm.add_qkv_bias else "LlamaForCausalLM"]

