"""What goes into a step and what comes out of it, whatever the objective: micro-batches onto the device, the data
statistics of the step over data-parallel ranks, and the objective's reported values over micro-batches and ranks."""

from __future__ import annotations

import itertools
from typing import Iterator

import torch

from omni_mega.runtime.collectives import all_reduce_values


def to_device(batches: list[dict], device: torch.device) -> Iterator[dict]:
    """Each micro-batch's tensors on `device` (moved as megatron's schedule pulls them); `stats` stays behind."""
    for mb in batches:
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in mb.items() if k != "stats"}


def schedule_iterator(batches: Iterator[dict], chunks: int):
    """The data_iterator megatron's schedule takes. Interleaved (vpp): megatron calls the step function, hence
    next(), once per micro-batch on *every* virtual chunk, so each needs the whole stream (one shared iterator ran
    dry: StopIteration); tee buffers only the micro-batches one chunk runs ahead of another."""
    return list(itertools.tee(batches, chunks)) if chunks > 1 else batches


def step_stats(batches: list[dict], dp_group=None) -> dict[str, int]:
    """The micro-batches' `stats` summed, then summed over the data-parallel group (pipeline ranks of one replica
    read the same packs, so they are not added again)."""
    keys = sorted({k for mb in batches for k in mb.get("stats", {})})
    local = [sum(int(mb.get("stats", {}).get(k, 0)) for mb in batches) for k in keys]
    return dict(zip(keys, all_reduce_values(local, "sum", dp_group, torch.int64)))


def reduce_metrics(losses: list[dict], names: tuple[str, ...]) -> dict[str, float]:
    """The objective's values of one step: every loss dict value is float64 [sum, count] (`objectives.base.metric`);
    sums and counts are added over micro-batches and all ranks (only last-pipeline-stage ranks have any), then
    divided. Every rank gets the same numbers."""
    local = []
    for name in names:
        pairs = [x[name].detach().double().cpu().reshape(2) for x in losses if name in x]
        total = torch.stack(pairs).sum(0) if pairs else torch.zeros(2, dtype=torch.float64)
        local += total.tolist()
    flat = all_reduce_values(local, "sum")
    return {n: (flat[2 * i] / flat[2 * i + 1] if flat[2 * i + 1] else float("nan")) for i, n in enumerate(names)}
