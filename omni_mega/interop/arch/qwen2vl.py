"""Qwen2-VL's vision tower and patch merger (the language model is a Qwen2 decoder with M-RoPE)."""

from __future__ import annotations

from omni_mega.config import ConnectorConfig, ModelConfig, ViTConfig
from omni_mega.interop import transforms as T
from omni_mega.interop.arch.base import Rule, Stack, need, int_ratio
from omni_mega.interop.errors import InteropError

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


def qwen2vl_vision(v: dict, llm_width: int) -> tuple[ViTConfig, ConnectorConfig]:
    act = v.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise InteropError(f"config.json: vision_config.hidden_act {act!r} is not supported (quick_gelu, gelu)")
    embed = int(need(v, "embed_dim", "config.json vision_config"))
    heads = int(need(v, "num_heads", "config.json vision_config"))
    merge = int(v.get("spatial_merge_size", 2))
    theta = float((v.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    vit = ViTConfig(num_layers=int(need(v, "depth", "config.json vision_config")), hidden_size=embed,
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


def qwen2vl_vision_hf(vit: ViTConfig, llm_width: int) -> dict:
    return {"depth": vit.num_layers, "embed_dim": vit.hidden_size, "hidden_size": llm_width,
            "hidden_act": vit.activation, "mlp_ratio": int_ratio(vit.ffn_hidden_size or 4 * vit.hidden_size, vit.hidden_size),
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
