"""Named module groups of a model chunk, resolved against the chunks this rank holds.

A model exposes its groups with `named_groups() -> {name: ModuleGroup}`; megatron's GPTModel does not, so
`llm_groups` provides the text groups for it. Layer lists carry *global* layer indices (pipeline offset included),
so `llm.layers[-2:]` selects the same two layers under any PP layout; a rank that holds none of them just gets an
empty selection. The names and their syntax are `omni_mega.config.groups` (pure, so configs are checked before any
model exists).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omni_mega.config.groups import parse_group


@dataclass
class ModuleGroup:
    """Modules of one named group on this rank. `layers` (global index -> module) and `total_layers` are set for
    sliceable layer lists."""

    modules: list[torch.nn.Module] = field(default_factory=list)
    layers: dict[int, torch.nn.Module] | None = None
    total_layers: int = 0


def llm_groups(chunk) -> dict[str, ModuleGroup]:
    """Groups of one megatron GPTModel chunk (unwrapped). Absent parts (embedding off the first pipeline stage,
    output layer off the last) are empty groups, not errors."""
    layers = {layer.layer_number - 1: layer for layer in chunk.decoder.layers}  # layer_number: global, 1-based
    groups = {
        "llm": ModuleGroup([chunk]),
        "llm.embedding": ModuleGroup([chunk.embedding] if chunk.pre_process else []),
        "llm.layers": ModuleGroup(list(layers.values()), layers, chunk.config.num_layers),
        "llm.final_norm": ModuleGroup([chunk.decoder.final_layernorm] if chunk.decoder.final_layernorm is not None
                                      and chunk.post_process else []),
        "llm.output_layer": ModuleGroup([chunk.output_layer] if chunk.post_process else []),
    }
    if getattr(chunk.config, "num_moe_experts", None) is not None:  # the MoE layers' parts (this rank's experts)
        moe = [layer.mlp for layer in layers.values() if getattr(layer, "is_moe_layer", False)]
        groups.update({
            "llm.experts": ModuleGroup([m.experts for m in moe]),
            "llm.router": ModuleGroup([m.router for m in moe]),
            "llm.shared_experts": ModuleGroup([m.shared_experts for m in moe if m.shared_experts is not None]),
        })
    return groups


def chunk_groups(chunk) -> dict[str, ModuleGroup]:
    return chunk.named_groups() if hasattr(chunk, "named_groups") else llm_groups(chunk)


def _modules(chunks: list, name: str) -> list[torch.nn.Module]:
    """Modules of group `name` held by this rank's (unwrapped) chunks."""
    ref = parse_group(name)
    out: list[torch.nn.Module] = []
    for chunk in chunks:
        groups = chunk_groups(chunk)
        if ref.base not in groups:
            raise KeyError(f"unknown module group {name!r}; this model has {', '.join(sorted(groups))}")
        grp = groups[ref.base]
        if ref.index is None:
            out += grp.modules
        elif grp.layers is None:
            raise KeyError(f"{name!r}: group {ref.base!r} is not a layer list and takes no slice")
        else:
            out += [grp.layers[i] for i in ref.select(grp.total_layers) if i in grp.layers]
    return out


def resolve(chunks: list, name: str) -> list[torch.nn.Parameter]:
    """Parameters of group `name` (e.g. 'llm.layers[-2:]') held by this rank's (unwrapped) chunks."""
    params = {id(p): p for m in _modules(chunks, name) for p in m.parameters()}
    return list(params.values())


def resolve_buffers(chunks: list, name: str) -> list[torch.Tensor]:
    """Buffers of group `name` held by this rank's chunks (running statistics such as the codec's usage EMA:
    loading a group loads them with its parameters)."""
    bufs = {id(b): b for m in _modules(chunks, name) for b in m.buffers()}
    return list(bufs.values())
