"""The mapping vocabulary every family table uses: a rule (megatron key <- HF names through a named transform), a
stack (one part of a model under one HF prefix) and its expansion into one row per tensor."""

from __future__ import annotations

from dataclasses import dataclass, field

from omni_mega.interop import transforms as T
from omni_mega.interop.errors import InteropError


@dataclass(frozen=True)
class Rule:
    mcore: str  # megatron checkpoint key (template)
    hf: tuple[str, ...]  # Hugging Face tensor names (templates), the transform's inputs in order
    shapes: tuple[str, ...] = ()  # expected HF shape of each input, as dims of the stack ("q,h": q rows, h columns)
    transform: str = "copy"  # a name the stack's transform factory knows
    when: str | None = None  # only when this flag of the stack's config is true (e.g. add_qkv_bias)


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


def text_fields(hf: dict) -> dict:
    """The language model's fields: `text_config` (transformers v5 layout of VLMs) or the top level."""
    return {**hf, **(hf.get("text_config") or {})}


def need(d: dict, key: str, where: str = "config.json"):
    if key not in d or d[key] is None:
        raise InteropError(f"{where}: missing {key!r}")
    return d[key]


def int_ratio(a: int, b: int) -> int | float:
    return a // b if a % b == 0 else a / b  # transformers' config validation wants an int when it is one
