"""SigLIP's vision tower alone (SiglipVisionModel, or the vision half of SiglipModel) to initialise a ViT."""

from __future__ import annotations

from dataclasses import dataclass

from omni_mega.config import LLMConfig, ModelConfig, ViTConfig
from omni_mega.interop import transforms as T
from omni_mega.interop.arch.base import Rule, Stack, need
from omni_mega.interop.errors import InteropError

_V = "block.layers.{i}."
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


def siglip_vision(v: dict) -> ViTConfig:
    act = v.get("hidden_act", "gelu_pytorch_tanh")
    acts = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
    if act not in acts:
        raise InteropError(f"config.json: SigLIP hidden_act {act!r} is not supported ({', '.join(acts)})")
    image, patch = int(v.get("image_size", 224)), int(v.get("patch_size", 16))  # the conv floors: 384 / 14 -> 27
    h = int(need(v, "hidden_size"))
    return ViTConfig(num_layers=int(need(v, "num_hidden_layers")), hidden_size=h,
                     num_attention_heads=int(need(v, "num_attention_heads")), patch_size=patch,
                     temporal_patch_size=1, merge_size=1, in_channels=int(v.get("num_channels", 3)),
                     ffn_hidden_size=int(need(v, "intermediate_size")), normalization="LayerNorm",
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
class SiglipFamily:
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
