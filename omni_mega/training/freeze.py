"""Freeze/unfreeze a stage's trainable module groups (`omni_mega.models.groups` resolves the names on this rank)."""

from __future__ import annotations

from omni_mega.config import ConfigError
from omni_mega.models.groups import resolve
from omni_mega.runtime.collectives import all_reduce_scalar


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
        counts[g] = param_count(params)
    for g, n in counts.items():
        if n == 0:
            raise ConfigError(f"stages[{stage_name}].trainable: group {g!r} selects no parameters in this model")
    return counts


def trainable_count(chunks: list) -> int:
    """Trainable elements over the whole model (summed over ranks of one data-parallel replica)."""
    return param_count([p for c in chunks for p in c.parameters() if p.requires_grad])


def param_count(params: list) -> int:
    """Elements of `params` over the whole model: summed over the model-parallel ranks (TP x PP), and for
    expert-parallel parameters (megatron marks them allreduce=False: each EP rank holds other experts) over
    TP x EP x PP."""
    import torch
    from megatron.core import parallel_state as ps

    dense = sum(p.numel() for p in params if getattr(p, "allreduce", True))
    experts = sum(p.numel() for p in params if not getattr(p, "allreduce", True))
    group = ps.get_expert_tensor_model_pipeline_parallel_group() if ps.model_parallel_is_initialized() else None
    return model_sum(dense) + int(all_reduce_scalar(experts, "sum", group, torch.int64))


def model_sum(n: int) -> int:
    """`n` summed over the model-parallel ranks of this replica (TP x PP): a count over the whole model."""
    import torch
    from megatron.core import parallel_state as ps

    group = ps.get_model_parallel_group() if ps.model_parallel_is_initialized() else None
    return int(all_reduce_scalar(n, "sum", group, torch.int64))


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
