"""Freeze/unfreeze by named module groups, resolved against the model chunks this rank holds.

A model exposes its groups with `named_groups() -> {name: ModuleGroup}`; megatron's GPTModel does not, so
`llm_groups` provides the text groups for it. Layer lists carry *global* layer indices (pipeline offset included),
so `llm.layers[-2:]` selects the same two layers under any PP layout; a rank that holds none of them just gets an
empty selection. The models issue registers `vit`, `vit.layers`, `visual_head`, `vet`, `projector` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from omni_mega.config import ConfigError
from omni_mega.training.groups import parse_group


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
    g = {
        "llm": ModuleGroup([chunk]),
        "llm.embedding": ModuleGroup([chunk.embedding] if chunk.pre_process else []),
        "llm.layers": ModuleGroup(list(layers.values()), layers, chunk.config.num_layers),
        "llm.final_norm": ModuleGroup([chunk.decoder.final_layernorm] if chunk.decoder.final_layernorm is not None
                                      and chunk.post_process else []),
        "llm.output_layer": ModuleGroup([chunk.output_layer] if chunk.post_process else []),
    }
    return g


def chunk_groups(chunk) -> dict[str, ModuleGroup]:
    return chunk.named_groups() if hasattr(chunk, "named_groups") else llm_groups(chunk)


def resolve(chunks: list, name: str) -> list[torch.nn.Parameter]:
    """Parameters of group `name` (e.g. 'llm.layers[-2:]') held by this rank's (unwrapped) chunks."""
    ref = parse_group(name)
    params: dict[int, torch.nn.Parameter] = {}
    for chunk in chunks:
        groups = chunk_groups(chunk)
        if ref.base not in groups:
            raise KeyError(f"unknown module group {name!r}; this model has {', '.join(sorted(groups))}")
        grp = groups[ref.base]
        if ref.index is None:
            mods = grp.modules
        elif grp.layers is None:
            raise KeyError(f"{name!r}: group {ref.base!r} is not a layer list and takes no slice")
        else:
            mods = [grp.layers[i] for i in ref.select(grp.total_layers) if i in grp.layers]
        for m in mods:
            for p in m.parameters():
                params[id(p)] = p
    return list(params.values())


def apply_trainable(chunks: list, stage_name: str, groups: list[str]) -> dict[str, int]:
    """Sets requires_grad: True for the parameters of `groups`, False for every other. Returns the number of
    elements per group over the whole model (all ranks; TP shards counted once per shard). Raises ConfigError naming
    the stage when a group is unknown or selects nothing anywhere, or when nothing at all is trainable."""
    for c in chunks:
        for p in c.parameters():
            p.requires_grad_(False)
    counts = {}
    for g in groups:
        try:
            params = resolve(chunks, g)
        except KeyError as e:
            raise ConfigError(f"stages[{stage_name}].trainable: {e.args[0]}") from None
        for p in params:
            p.requires_grad_(True)
        counts[g] = _global_sum(sum(p.numel() for p in params))
    for g, n in counts.items():
        if n == 0:
            raise ConfigError(f"stages[{stage_name}].trainable: group {g!r} selects no parameters in this model")
    return counts


def trainable_count(chunks: list) -> int:
    """Trainable elements over the whole model (summed over ranks of one data-parallel replica)."""
    return _global_sum(sum(p.numel() for c in chunks for p in c.parameters() if p.requires_grad))


def _global_sum(n: int) -> int:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return n
    from megatron.core import parallel_state as ps

    t = torch.tensor([n], dtype=torch.int64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t, group=ps.get_model_parallel_group())
    return int(t.item())


def mark_frozen_pipeline_input(chunks: list) -> None:
    """A first-pipeline-stage chunk with no trainable parameter produces an output without autograd history, and the
    pipeline schedule's backward on it fails (Megatron-LM#1314). Making its embedding output require grad gives the
    backward a graph to run (it computes a throw-away input gradient, no parameter gradient)."""
    for c in chunks:
        # GPTModel has .embedding; a multimodal wrapper (models.omni) holds the GPTModel as .llm.
        emb = getattr(c, "embedding", None) or getattr(getattr(c, "llm", None), "embedding", None)
        if not getattr(c, "pre_process", False) or emb is None:
            continue
        handle = getattr(c, "_omni_frozen_hook", None)
        if handle is not None:
            handle.remove()
            c._omni_frozen_hook = None
        if not any(p.requires_grad for p in c.parameters()):
            c._omni_frozen_hook = emb.register_forward_hook(
                lambda mod, args, out: out.requires_grad_(True) if not out.requires_grad else out)
