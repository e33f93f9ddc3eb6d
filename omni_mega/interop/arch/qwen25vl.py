"""Qwen2.5-VL: a Qwen2 decoder with M-RoPE (as Qwen2-VL) and a vision tower with RMSNorm, a SwiGLU MLP with biases
and windowed attention (`models.vision.windows`); the merger is Qwen2-VL's with an RMSNorm ln_q."""

from __future__ import annotations

from dataclasses import dataclass

from omni_mega.config import ConnectorConfig, ModelConfig, ViTConfig
from omni_mega.interop import transforms as T
from omni_mega.interop.arch.base import Rule, Stack, need, text_fields
from omni_mega.interop.arch.decoder import rope_to_hf, decoder_hf, decoder_stack, mrope_decoder
from omni_mega.interop.errors import InteropError

ARCH = "Qwen2_5_VLForConditionalGeneration"
_V = "block.layers.{i}."
_B = "blocks.{i}."
QWEN25VL_VISION_RULES = (  # dims: E width, F MLP width, M = E x merge^2, h the LLM width, patch = C,t,p,p
    Rule("vit.patch_embed.weight", ("patch_embed.proj.weight",), ("E,C,t,p,p",), "patch"),
    Rule("vit." + _V + "self_attention.linear_qkv.layer_norm_weight", (_B + "norm1.weight",), ("E",)),
    Rule("vit." + _V + "self_attention.linear_qkv.weight", (_B + "attn.qkv.weight",), ("E3,E",), "fused_qkv"),
    Rule("vit." + _V + "self_attention.linear_qkv.bias", (_B + "attn.qkv.bias",), ("E3",), "fused_qkv"),
    Rule("vit." + _V + "self_attention.linear_proj.weight", (_B + "attn.proj.weight",), ("E,E",)),
    Rule("vit." + _V + "self_attention.linear_proj.bias", (_B + "attn.proj.bias",), ("E",)),
    Rule("vit." + _V + "mlp.linear_fc1.layer_norm_weight", (_B + "norm2.weight",), ("E",)),
    # SwiGLU: megatron's fc1 holds [gate; up] for the weight and the bias alike
    Rule("vit." + _V + "mlp.linear_fc1.weight", (_B + "mlp.gate_proj.weight", _B + "mlp.up_proj.weight"),
         ("F,E", "F,E"), "gate_up"),
    Rule("vit." + _V + "mlp.linear_fc1.bias", (_B + "mlp.gate_proj.bias", _B + "mlp.up_proj.bias"), ("F", "F"),
         "gate_up"),
    Rule("vit." + _V + "mlp.linear_fc2.weight", (_B + "mlp.down_proj.weight",), ("E,F",)),
    Rule("vit." + _V + "mlp.linear_fc2.bias", (_B + "mlp.down_proj.bias",), ("E",)),
    # ln_q normalises every patch before the merge, as our ViT's final norm does
    Rule("vit.block.final_layernorm.weight", ("merger.ln_q.weight",), ("E",)),
    Rule("connector.mlp.linear_fc1.weight", ("merger.mlp.0.weight",), ("M,M",)),
    Rule("connector.mlp.linear_fc1.bias", ("merger.mlp.0.bias",), ("M",)),
    Rule("connector.mlp.linear_fc2.weight", ("merger.mlp.2.weight",), ("h,M",)),
    Rule("connector.mlp.linear_fc2.bias", ("merger.mlp.2.bias",), ("h",)),
)


def qwen25vl_vision(v: dict, llm_width: int) -> tuple[ViTConfig, ConnectorConfig]:
    where = "config.json vision_config"
    act = v.get("hidden_act", "silu")
    if act != "silu":
        raise InteropError(f"{where}: hidden_act {act!r} is not supported (silu: the tower's SwiGLU MLP)")
    embed, merge = int(need(v, "hidden_size", where)), int(v.get("spatial_merge_size", 2))
    theta = float((v.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    vit = ViTConfig(num_layers=int(need(v, "depth", where)), hidden_size=embed,
                    num_attention_heads=int(need(v, "num_heads", where)), patch_size=int(v.get("patch_size", 14)),
                    temporal_patch_size=int(v.get("temporal_patch_size", 2)), merge_size=merge,
                    in_channels=int(v.get("in_channels", 3)), ffn_hidden_size=int(need(v, "intermediate_size", where)),
                    normalization="RMSNorm", norm_epsilon=1e-6, activation="swiglu", rope_theta=theta,
                    rope_layout="half", pos_embed_grid=0, init_method_std=float(v.get("initializer_range", 0.02)),
                    window_size=int(v.get("window_size", 112)),
                    full_attention_layers=[int(i) for i in v.get("fullatt_block_indexes", (7, 15, 23, 31))])
    out = int(v.get("out_hidden_size", llm_width))
    if out != llm_width:
        raise InteropError(f"{where}: out_hidden_size {out} (the merger's output) differs from the language model's "
                           f"hidden_size {llm_width}")
    return vit, ConnectorConfig(kind="mlp", projector_hidden_size=embed * merge * merge)


def qwen25vl_vision_hf(vit: ViTConfig, llm_width: int) -> dict:
    # no windows here = every layer full: the smallest legal window with all layers listed as full attention
    window = vit.window_size or vit.patch_size * vit.merge_size
    full = list(vit.full_attention_layers) if vit.window_size else list(range(vit.num_layers))
    return {"depth": vit.num_layers, "hidden_size": vit.hidden_size, "out_hidden_size": llm_width,
            "intermediate_size": vit.ffn_hidden_size or 4 * vit.hidden_size, "hidden_act": "silu",
            "num_heads": vit.num_attention_heads, "in_channels": vit.in_channels, "patch_size": vit.patch_size,
            "spatial_merge_size": vit.merge_size, "temporal_patch_size": vit.temporal_patch_size,
            "window_size": window, "fullatt_block_indexes": full, "initializer_range": vit.init_method_std}


def qwen25vl_vision_stack(cfg: ModelConfig, prefixes: tuple[str, ...]) -> Stack:
    vit = cfg.vit
    d = vit.hidden_size // vit.num_attention_heads
    shape = (vit.hidden_size, vit.in_channels, vit.temporal_patch_size, vit.patch_size, vit.patch_size)
    return Stack(QWEN25VL_VISION_RULES, prefixes, "", vit.num_layers,
                 transforms={"copy": T.copy(), "fused_qkv": T.fused_qkv_per_head(vit.num_attention_heads, d),
                             "gate_up": T.gate_up(), "patch": T.conv_as_linear(shape)},
                 dims={"E": vit.hidden_size, "E3": 3 * vit.hidden_size, "F": vit.ffn_hidden_size or 4 * vit.hidden_size,
                       "M": vit.hidden_size * vit.merge_size**2, "h": cfg.llm.hidden_size, "C": vit.in_channels,
                       "t": vit.temporal_patch_size, "p": vit.patch_size})


def check_qwen25vl(cfg: ModelConfig) -> None:
    """Raises InteropError unless the model is expressible as Qwen2_5_VLForConditionalGeneration."""
    vit, conn, llm = cfg.vit, cfg.connector or ConnectorConfig(), cfg.llm
    problems = []
    if vit is None:
        problems.append("a vision tower (model.vit)")
    else:
        if (vit.normalization, vit.norm_epsilon, vit.activation) != ("RMSNorm", 1e-6, "swiglu"):
            problems.append("model.vit normalization RMSNorm with norm_epsilon 1e-6 and activation swiglu")
        if vit.pos_embed_grid or vit.rope_layout != "half" or vit.patch_bias:
            problems.append("model.vit pos_embed_grid 0, rope_layout half and no patch_bias")
        if conn.kind != "mlp" or (conn.projector_hidden_size or llm.hidden_size) != vit.hidden_size * vit.merge_size**2:
            problems.append("model.connector kind mlp with projector_hidden_size = vit hidden x merge^2")
    if llm.mrope_section is None or not llm.add_qkv_bias or llm.qk_layernorm:
        problems.append("model.llm with mrope_section, add_qkv_bias and no qk_layernorm (a Qwen2 decoder)")
    if problems:
        raise InteropError(f"this model has no {ARCH} equivalent: it needs " + "; ".join(problems))


@dataclass(frozen=True)
class Qwen25VLFamily:
    architecture: str = ARCH
    model_type: str = "qwen2_5_vl"
    vision_only = False
    ignored_prefixes: tuple[str, ...] = ()

    def to_config(self, hf: dict) -> ModelConfig:
        llm = mrope_decoder(text_fields(hf), self.architecture)
        vit, conn = qwen25vl_vision(need(hf, "vision_config"), llm.hidden_size)
        conn.image_token_id = int(need(hf, "image_token_id"))
        return ModelConfig(llm=llm, vit=vit, connector=conn)

    def stacks(self, cfg: ModelConfig, padded_vocab: int) -> list[Stack]:
        return [decoder_stack(cfg, padded_vocab, ("model.", "model.language_model."), "llm."),
                qwen25vl_vision_stack(cfg, ("visual.", "model.visual."))]

    def to_hf_config(self, cfg: ModelConfig, vocab: int, dtype: str, base: dict | None) -> dict:
        check_qwen25vl(cfg)
        img = (cfg.connector or ConnectorConfig()).image_token_id
        if not 0 <= img < vocab:
            raise InteropError(f"model.connector.image_token_id {img} is not a token of the {vocab}-token "
                               f"vocabulary; {self.architecture} needs a real image token id")
        base = base or {}
        # the flat layout released checkpoints carry: text fields at the top level (transformers v5 reads both)
        out = {k: v for k, v in base.items() if k not in ("rope_parameters", "text_config")}
        out.update({k: v for k, v in (base.get("text_config") or {}).items()
                    if k not in ("rope_parameters", "model_type", "architectures")})
        out.update(decoder_hf(cfg.llm, vocab))
        out.update({"sliding_window": None, "use_sliding_window": False,
                    **rope_to_hf(cfg.llm, cfg.llm.mrope_section)})
        out["vision_config"] = {**base.get("vision_config", {}), **qwen25vl_vision_hf(cfg.vit, cfg.llm.hidden_size)}
        out.update({"image_token_id": img, "architectures": [self.architecture], "model_type": self.model_type,
                    "dtype": dtype})
        return out
