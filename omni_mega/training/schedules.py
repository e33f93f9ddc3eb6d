"""Learning-rate schedules as pure functions of the step, so a resumed run needs only the step to continue exactly."""

from __future__ import annotations

import math

from omni_mega.config import OptimConfig


def lr_at(step: int, total_steps: int, optim: OptimConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warm-up to `optim.lr`, then decay to `optim.min_lr`."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return optim.lr
    decay_steps = max(1, total_steps - optim.warmup_steps)
    frac = min(1.0, (step - optim.warmup_steps) / decay_steps)
    if optim.decay == "linear":
        coeff = 1.0 - frac
    else:  # cosine
        coeff = 0.5 * (1.0 + math.cos(math.pi * frac))
    return optim.min_lr + (optim.lr - optim.min_lr) * coeff
