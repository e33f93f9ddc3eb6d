"""SigLIP2's NaFlex vision tower (Siglip2VisionModel, or the vision half of Siglip2Model) to initialise a ViT.

It is SigLIP's encoder with two differences at the input: the patch embedding is a Linear over patches flattened
channels-last (p, p, C) where ours reads (C, p, p) (a column permutation on the way in and out), and the learned
`num_patches` table is resized to each image's grid with an antialiased bilinear filter (`pos_embed_antialias`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from omni_mega.config import LLMConfig, ModelConfig, ViTConfig
from omni_mega.interop import transforms as T
from omni_mega.interop.arch.base import Rule, Stack, need
from omni_mega.interop.arch.siglip import SIGLIP_VISION_RULES, SiglipFamily, siglip_vision, siglip_vision_hf
from omni_mega.interop.errors import InteropError

# the patch rule reads a Linear [E, p*p*C] (dims: K = p*p*C); every other row is SigLIP's
SIGLIP2_VISION_RULES = (Rule("vit.patch_embed.weight", ("embeddings.patch_embedding.weight",), ("E,K",), "patch"),
                        *(r for r in SIGLIP_VISION_RULES if r.mcore != "vit.patch_embed.weight"))


def siglip2_vision(v: dict) -> ViTConfig:
    patch = v.get("patch_size", 16)
    if not isinstance(patch, int):
        raise InteropError(f"config.json: SigLIP2 patch_size {patch!r} is not supported (a single int)")
    n = int(need(v, "num_patches"))
    grid = math.isqrt(n)
    if grid * grid != n:
        raise InteropError(f"config.json: SigLIP2 num_patches {n} is not a square (the position table is a grid)")
    base = siglip_vision({**v, "image_size": grid * patch, "patch_size": patch})
    return dataclasses.replace(base, pos_embed_grid=grid, pos_embed_antialias=True)


def siglip2_vision_hf(vit: ViTConfig) -> dict:
    if not vit.pos_embed_antialias:
        raise InteropError("this ViT has no Siglip2VisionModel equivalent: SigLIP2 resizes its position table with "
                           "antialiasing (model.vit.pos_embed_antialias: true)")
    out = siglip_vision_hf(vit)
    del out["image_size"]  # NaFlex has no fixed image size: the table's size is num_patches
    out["num_patches"] = vit.pos_embed_grid ** 2
    return out


def siglip2_vision_stack(cfg: ModelConfig, prefixes: tuple[str, ...]) -> Stack:
    vit = cfg.vit
    d = vit.hidden_size // vit.num_attention_heads
    c, p = vit.in_channels, vit.patch_size
    return Stack(SIGLIP2_VISION_RULES, prefixes, "", vit.num_layers,
                 transforms={"copy": T.copy(), "patch": T.patch_channels_last(vit.hidden_size, c, p),
                             "qkv": T.qkv_per_group(vit.num_attention_heads, vit.num_attention_heads, d)},
                 dims={"E": vit.hidden_size, "F": vit.ffn_hidden_size or 4 * vit.hidden_size,
                       "G2": vit.pos_embed_grid ** 2, "K": c * p * p})


@dataclass(frozen=True)
class Siglip2Family(SiglipFamily):
    """SigLIP2's vision tower alone, like `SiglipFamily` (exported as a Siglip2VisionModel without the pooling head)."""

    def to_config(self, hf: dict) -> ModelConfig:
        v = hf.get("vision_config") or hf
        return ModelConfig(llm=LLMConfig(), vit=siglip2_vision(v), connector=None)

    def stacks(self, cfg: ModelConfig, padded_vocab: int | None = None) -> list[Stack]:
        return [siglip2_vision_stack(cfg, ("", "vision_model."))]

    def to_hf_config(self, cfg: ModelConfig, vocab: int | None, dtype: str, base: dict | None) -> dict:
        base = base or {}
        out = {k: v for k, v in {**base, **(base.get("vision_config") or {})}.items()
               if k not in ("text_config", "vision_config", "image_size")}
        out.update(siglip2_vision_hf(cfg.vit))
        out.update({"architectures": ["Siglip2VisionModel"], "model_type": "siglip2_vision_model", "dtype": dtype})
        return out
