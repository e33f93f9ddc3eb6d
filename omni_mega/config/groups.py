"""Module-group names used by stage configs (`llm`, `llm.embedding`, `llm.layers[-2:]`, `vit.layers[-1:]`, ...).

Pure Python (no torch) so config validation can check names before any model exists. A name is a dotted path,
optionally ending in a Python-style slice or index over a layer list: `layers[-2:]`, `layers[3]`, `layers[1:3]`.
Slices count over the *whole* model's layers (all pipeline ranks), so the same name means the same layers under any
TP/PP layout; `omni_mega.models.groups.resolve` maps them to the layers a rank holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?:\[(-?\d*)(:(-?\d*))?\])?$")

# Groups every text model has. Vision groups exist only when the model config has the parts (the models register
# them through `named_groups()`).
LLM_GROUPS = ("llm", "llm.embedding", "llm.layers", "llm.final_norm", "llm.output_layer")
SLICEABLE = ("llm.layers", "vit.layers")
SLICEABLE += ("audio.layers", "talker.layers")
# Groups of the optional audio, speech and classifier parts (models register them through `named_groups()`).
PART_GROUPS = {"audio": ("audio", "audio.conv", "audio.layers", "ctc_head", "audio_projector"),
               "codec": ("codec",), "talker": ("talker", "talker.layers"), "classifier": ("classifier",)}


@dataclass(frozen=True)
class GroupRef:
    base: str  # e.g. "llm.layers"
    index: slice | int | None  # None: the whole group

    def select(self, total: int) -> list[int]:
        """Global indices (0-based) this reference picks out of `total` layers."""
        if self.index is None:
            return list(range(total))
        if isinstance(self.index, int):
            i = self.index + total if self.index < 0 else self.index
            return [i] if 0 <= i < total else []
        return list(range(total))[self.index]


def parse_group(name: str) -> GroupRef:
    """'llm.layers[-2:]' -> GroupRef('llm.layers', slice(-2, None)). Raises ValueError on bad syntax."""
    m = _NAME.match(name.strip())
    if not m:
        raise ValueError(f"{name!r} is not a module-group name (expected e.g. llm, llm.embedding, llm.layers[-2:])")
    base, start, colon, stop = m.group(1), m.group(2), m.group(3), m.group(4)
    if start is None:
        return GroupRef(base, None)
    if colon is None:
        if start == "":
            raise ValueError(f"{name!r}: empty index")
        return GroupRef(base, int(start))
    return GroupRef(base, slice(int(start) if start else None, int(stop) if stop else None))


# A mixture-of-experts LLM's parts, over every MoE layer: routed experts, routers (gate weights and expert biases),
# shared experts. Freeze sets name them like any group (`trainable: [llm.experts]` trains only the experts).
MOE_GROUPS = ("llm.experts", "llm.router", "llm.shared_experts")
# The contrastive pre-training towers (model.contrastive): the text encoder, the captioning decoder, and the image
# side's attentional pooler with the learnable temperature and bias.
CONTRASTIVE_GROUPS = ("text_tower", "caption_decoder", "image_pooler")


def known_groups(has_vision: bool, has_connector: bool, *, moe: bool = False,
                 contrastive: bool = False) -> tuple[str, ...]:
    groups = list(LLM_GROUPS)
    if moe:
        groups += MOE_GROUPS
    if has_vision:
        groups += ["vit", "vit.patch_embed", "vit.layers", "visual_head"]
    if has_connector:
        groups += ["vet", "projector"]
    if contrastive:
        groups += CONTRASTIVE_GROUPS
    return tuple(groups)


def part_groups(model) -> tuple[str, ...]:
    """Groups of the optional audio, speech and classifier parts a model config (config.ModelConfig, read by
    attribute) has; `known_groups` gives the text and vision ones."""
    return tuple(g for part, names in PART_GROUPS.items() if getattr(model, part, None) is not None for g in names)


def model_groups(model) -> tuple[str, ...]:
    """Every group name a ModelConfig (read by attribute) has: `known_groups` plus `part_groups`."""
    return known_groups(model.vit is not None, model.connector is not None or model.vit is not None,
                        moe=model.llm.num_moe_experts is not None,
                        contrastive=getattr(model, "contrastive", None) is not None) + part_groups(model)


def check_group_name(name: str, known: tuple[str, ...]) -> GroupRef:
    """Parses `name` and checks it against `known`; ValueError says what is valid."""
    ref = parse_group(name)
    if ref.base not in known:
        raise ValueError(f"unknown module group {name!r}; known groups: {', '.join(known)} "
                         f"(layer lists accept slices: {', '.join(s + '[-2:]' for s in SLICEABLE if s in known)})")
    if ref.index is not None and ref.base not in SLICEABLE:
        raise ValueError(f"{name!r}: only layer lists ({', '.join(SLICEABLE)}) take an index or slice")
    return ref
