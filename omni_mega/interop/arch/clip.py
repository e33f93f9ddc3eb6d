"""CLIP's vision tower (CLIPVisionModel, or the vision half of CLIPModel) as a ViT: a class token, a fixed
(image_size / patch_size)^2 position table whose row 0 is the class token's, a norm on the embeddings
(`pre_layrnorm`), and a post_layernorm that CLIP applies to its pooled class token only (so the patch features
skip it: `final_norm: false`). The encoder layers are named as SigLIP's."""

from __future__ import annotations

from dataclasses import dataclass

from omni_mega.config import LLMConfig, ModelConfig, ViTConfig
from omni_mega.interop import transforms as T
from omni_mega.interop.arch.base import Rule, Stack, need
from omni_mega.interop.arch.siglip import SIGLIP_VISION_RULES
from omni_mega.interop.errors import InteropError

CLIP_VISION_RULES = (  # dims: E width, F MLP width, P = 1 + grid^2 position rows, patch = E,C,p,p
    Rule("vit.patch_embed.weight", ("embeddings.patch_embedding.weight",), ("E,C,p,p",), "patch"),
    Rule("vit.class_token.weight", ("embeddings.class_embedding",), ("E",)),
    Rule("vit.pos_embed.table", ("embeddings.position_embedding.weight",), ("P,E",)),
    Rule("vit.pre_norm.weight", ("pre_layrnorm.weight",), ("E",)),  # sic: CLIP's spelling
    Rule("vit.pre_norm.bias", ("pre_layrnorm.bias",), ("E",)),
    # the encoder layers and post_layernorm have SigLIP's names and shapes
    *(r for r in SIGLIP_VISION_RULES if "{i}" in r.mcore or "final_layernorm" in r.mcore),
)
_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}


def clip_vision(v: dict, *, feature_layer: int = -1, feature_select: str = "default") -> ViTConfig:
    act = v.get("hidden_act", "quick_gelu")
    if act not in _ACTS:
        raise InteropError(f"config.json: CLIP hidden_act {act!r} is not supported ({', '.join(_ACTS)})")
    image, patch = int(v.get("image_size", 224)), int(v.get("patch_size", 32))
    if image % patch:
        raise InteropError(f"config.json: CLIP image_size {image} is not a multiple of patch_size {patch}")
    h = int(need(v, "hidden_size", "config.json vision_config"))
    return ViTConfig(num_layers=int(need(v, "num_hidden_layers", "config.json vision_config")), hidden_size=h,
                     num_attention_heads=int(need(v, "num_attention_heads", "config.json vision_config")),
                     patch_size=patch, temporal_patch_size=1, merge_size=1, in_channels=int(v.get("num_channels", 3)),
                     ffn_hidden_size=int(need(v, "intermediate_size", "config.json vision_config")),
                     normalization="LayerNorm", norm_epsilon=float(v.get("layer_norm_eps", 1e-5)),
                     activation=_ACTS[act], rope_layout="none", pos_embed_grid=image // patch, patch_bias=False,
                     init_method_std=float(v.get("initializer_range", 0.02)), class_token=True, pre_norm=True,
                     feature_layer=feature_layer, final_norm=False, feature_select=feature_select)


def check_clip_vision(vit: ViTConfig) -> list[str]:
    """What keeps this ViT from being a CLIP vision tower (empty when nothing)."""
    need_ = {"normalization": "LayerNorm", "rope_layout": "none", "patch_bias": False, "temporal_patch_size": 1,
             "merge_size": 1, "class_token": True, "pre_norm": True, "final_norm": False}
    out = [f"model.vit.{k} must be {v!r}" for k, v in need_.items() if getattr(vit, k) != v]
    if vit.activation not in {v: k for k, v in _ACTS.items()}:
        out.append("model.vit.activation must be quick_gelu, gelu or gelu_tanh")
    if not vit.pos_embed_grid:
        out.append("model.vit.pos_embed_grid must be > 0 (CLIP's learned position table)")
    return out


def clip_vision_hf(vit: ViTConfig) -> dict:
    problems = check_clip_vision(vit)
    if problems:
        raise InteropError("this ViT has no CLIPVisionModel equivalent: " + "; ".join(problems))
    return {"hidden_size": vit.hidden_size, "intermediate_size": vit.ffn_hidden_size or 4 * vit.hidden_size,
            "num_hidden_layers": vit.num_layers, "num_attention_heads": vit.num_attention_heads,
            "num_channels": vit.in_channels, "patch_size": vit.patch_size,
            "image_size": vit.patch_size * vit.pos_embed_grid, "layer_norm_eps": vit.norm_epsilon,
            "hidden_act": {v: k for k, v in _ACTS.items()}[vit.activation], "initializer_range": vit.init_method_std,
            "model_type": "clip_vision_model"}


def clip_vision_stack(cfg: ModelConfig, prefixes: tuple[str, ...]) -> Stack:
    vit = cfg.vit
    d = vit.hidden_size // vit.num_attention_heads
    shape = (vit.hidden_size, vit.in_channels, vit.patch_size, vit.patch_size)
    return Stack(CLIP_VISION_RULES, prefixes, "", vit.num_layers,
                 transforms={"copy": T.copy(), "patch": T.conv_as_linear(shape),
                             "qkv": T.qkv_per_group(vit.num_attention_heads, vit.num_attention_heads, d)},
                 dims={"E": vit.hidden_size, "F": vit.ffn_hidden_size or 4 * vit.hidden_size,
                       "P": 1 + vit.pos_embed_grid ** 2, "C": vit.in_channels, "p": vit.patch_size})


@dataclass(frozen=True)
class ClipFamily:
    """A CLIP vision tower alone: its checkpoint holds only `vit.*` keys (for `init_from: {vit: hf:...}`); the model
    config records the tower (features: the last layer's patch tokens), with a default language model that nothing
    loads into."""

    architecture: str
    model_type: str
    vision_only = True
    # CLIPModel's text half and projections; transformers 5 saves CLIPVisionModel without the vision_model. prefix
    ignored_prefixes: tuple[str, ...] = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")

    def to_config(self, hf: dict) -> ModelConfig:
        v = hf.get("vision_config") or hf
        return ModelConfig(llm=LLMConfig(), vit=clip_vision(v), connector=None)

    def stacks(self, cfg: ModelConfig, padded_vocab: int | None = None) -> list[Stack]:
        return [clip_vision_stack(cfg, ("", "vision_model."))]

    def to_hf_config(self, cfg: ModelConfig, vocab: int | None, dtype: str, base: dict | None) -> dict:
        base = base or {}
        out = {k: v for k, v in {**base, **(base.get("vision_config") or {})}.items()
               if k not in ("text_config", "vision_config", "logit_scale_init_value")}
        out.update(clip_vision_hf(cfg.vit))
        out.update({"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "dtype": dtype})
        return out
