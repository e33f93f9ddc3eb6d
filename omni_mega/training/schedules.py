"""Learning-rate schedules as pure functions of counters, so a resumed run needs only the global step.

A curriculum's LR plan is a list of *segments*. A stage with `schedule: new` or `rewarmup` opens a segment; each
following `schedule: resume` stage extends it (one schedule spanning those stages). Inside a segment: linear warm-up
(from 0 for `new`, from the LR the previous segment ended at for `rewarmup`) to the peak, then the decay:
cosine/linear to `min_lr` at the segment's last step, constant, WSD (warmup-stable-decay: the peak until the
last `decay_steps`, then linear to `min_lr`), or step (halved every `decay_steps` steps, floored at `min_lr`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omni_mega.config import OptimConfig, RunConfig


def lr_at(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Single-schedule LR for optimizer step `step` (0-based): warm-up to `optim.lr`, then decay to `optim.min_lr`
    over `total_steps` (the pre-curriculum form; kept for callers with one stage)."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return optim.lr
    decay_steps = max(1, total_steps - optim.warmup_steps)
    frac = min(1.0, (step - optim.warmup_steps) / decay_steps)
    if optim.decay == "linear":
        coeff = 1.0 - frac
    else:  # cosine (wsd needs a segment length: use Segment)
        coeff = 0.5 * (1.0 + math.cos(math.pi * frac))
    return optim.min_lr + (optim.lr - optim.min_lr) * coeff


@dataclass(frozen=True)
class Segment:
    """One schedule: starts at global step `start`, lasts `length` steps."""

    start: int
    length: int
    peak: float
    min_lr: float
    warmup: int
    decay: str  # cosine | linear | constant | wsd
    decay_steps: int  # wsd only: steps of the final decay
    rewarmup: bool  # warm up from the previous segment's last LR instead of 0


def segment_lr(seg: Segment, k: int, start_lr: float) -> float:
    """LR of step `k` (0-based) inside `seg`; `start_lr` is where the warm-up starts."""
    if k < seg.warmup:
        return start_lr + (seg.peak - start_lr) * (k + 1) / seg.warmup
    span = seg.peak - seg.min_lr
    if seg.decay == "constant":
        return seg.peak
    if seg.decay == "step":  # halved every decay_steps steps after the warm-up, never below min_lr
        return max(seg.min_lr, seg.peak * 0.5 ** ((k - seg.warmup) // seg.decay_steps))
    if seg.decay == "wsd":
        first_decay = seg.length - seg.decay_steps
        if k < first_decay:
            return seg.peak
        return seg.peak - span * min(1.0, (k - first_decay + 1) / seg.decay_steps)
    frac = min(1.0, (k - seg.warmup) / max(1, seg.length - seg.warmup - 1))
    coeff = 1.0 - frac if seg.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return seg.min_lr + span * coeff


def build_segments(cfg: RunConfig) -> tuple[list[Segment], list[int]]:
    """The run's segments and, per stage, the index of the segment it belongs to."""
    segments: list[Segment] = []
    owner: list[int] = []
    start = 0
    for s in cfg.stages:
        if s.schedule == "resume" and segments:
            last = segments[-1]
            segments[-1] = Segment(**{**last.__dict__, "length": last.length + s.steps})
        else:
            o = cfg.optim
            decay = s.decay or o.decay
            length = s.steps
            segments.append(Segment(
                start=start, length=length, peak=s.lr if s.lr is not None else o.lr,
                min_lr=s.min_lr if s.min_lr is not None else o.min_lr,
                warmup=s.warmup_steps if s.warmup_steps is not None else o.warmup_steps, decay=decay,
                decay_steps=0, rewarmup=s.schedule == "rewarmup" and bool(segments),
            ))
        owner.append(len(segments) - 1)
        start += s.steps
    # WSD decay length is known once a segment's full length is: default 20% of it, never longer than the segment.
    # Step decay: the halving interval (default 1,000 steps).
    out = []
    for seg, s_first in zip(segments, [cfg.stages[owner.index(i)] for i in range(len(segments))]):
        if seg.decay == "step":
            d = s_first.decay_steps if s_first.decay_steps is not None else 1000
        else:
            d = min(s_first.decay_steps if s_first.decay_steps is not None else max(1, round(0.2 * seg.length)),
                    seg.length)
        out.append(Segment(**{**seg.__dict__, "decay_steps": d}))
    return out, owner


def lr_for_step(segments: list[Segment], step: int) -> float:
    """LR of global optimizer step `step` (0-based) under the run's segments."""
    for i, seg in enumerate(segments):
        if step < seg.start + seg.length or i == len(segments) - 1:
            return segment_lr(seg, min(step - seg.start, seg.length - 1), _start_lr(segments, i))
    raise ValueError("no segments")


def _start_lr(segments: list[Segment], i: int) -> float:
    if i == 0 or not segments[i].rewarmup:
        return 0.0
    prev = segments[i - 1]
    return segment_lr(prev, prev.length - 1, _start_lr(segments, i - 1))
