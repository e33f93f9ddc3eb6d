"""LR schedules: pure functions of the global step across stages (new / resume / rewarmup; cosine, linear,
constant, WSD)."""

import math

import pytest

from omni_mega.config import OptimConfig, load_config
from omni_mega.training.schedules import build_segments, lr_at, lr_for_step


def test_warmup_then_cosine():
    o = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10, decay="cosine")
    assert lr_at(0, 110, o) == pytest.approx(0.1)
    assert lr_at(9, 110, o) == pytest.approx(1.0)
    assert lr_at(60, 110, o) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, 110, o) == pytest.approx(0.1)
    lrs = [lr_at(s, 110, o) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "decay must be monotone"


def test_linear_and_constant():
    lin = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, decay="linear")
    assert lr_at(50, 100, lin) == pytest.approx(0.5)
    const = OptimConfig(lr=0.3, min_lr=0.0, warmup_steps=2, decay="constant")
    assert lr_at(50, 100, const) == pytest.approx(0.3) and lr_at(0, 100, const) == pytest.approx(0.15)


def _lrs(*stages, **optim):
    over = [f"optim.{k}={v}" for k, v in optim.items()] + ["stages=[" + ", ".join(stages) + "]"]
    segs, owner = build_segments(load_config(None, over))
    total = segs[-1].start + segs[-1].length
    return [lr_for_step(segs, s) for s in range(total)], segs, owner


def test_wsd_warmup_stable_decay():
    lrs, segs, _ = _lrs("{name: a, steps: 20, decay: wsd, decay_steps: 5, warmup_steps: 4, lr: 1.0, min_lr: 0.1}")
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:15] == [1.0] * 11  # stable
    assert lrs[15:] == pytest.approx([1.0 - 0.9 * k / 5 for k in range(1, 6)])  # linear to min at the last step
    assert segs[0].decay_steps == 5


def test_wsd_default_decay_is_a_fifth():
    _, segs, _ = _lrs("{name: a, steps: 50, decay: wsd}")
    assert segs[0].decay_steps == 10


def test_resume_spans_stages_as_one_schedule():
    spanning, segs, owner = _lrs("{name: a, steps: 30}", "{name: b, steps: 70, schedule: resume}",
                                 lr=1.0, min_lr=0.0, warmup_steps=10, decay="linear")
    single, _, _ = _lrs("{name: ab, steps: 100}", lr=1.0, min_lr=0.0, warmup_steps=10, decay="linear")
    assert owner == [0, 0] and len(segs) == 1
    assert spanning == single
    assert spanning[-1] == pytest.approx(0.0) and spanning[10] == pytest.approx(1.0)


def test_rewarmup_starts_from_the_previous_stage_end():
    lrs, segs, owner = _lrs(
        "{name: pre, steps: 20, decay: cosine, lr: 1.0, min_lr: 0.2, warmup_steps: 5}",
        "{name: cool, steps: 10, schedule: rewarmup, lr: 1.5, min_lr: 0.1, warmup_steps: 4, decay: linear}",
    )
    assert owner == [0, 1]
    end = lrs[19]
    assert end == pytest.approx(0.2)  # cosine reaches min at its last step
    assert lrs[20:24] == pytest.approx([end + (1.5 - end) * k / 4 for k in range(1, 5)])
    assert lrs[-1] == pytest.approx(0.1)


def test_new_schedule_warms_from_zero_and_values_are_pure():
    lrs, _, _ = _lrs("{name: a, steps: 5, lr: 1.0, decay: constant, warmup_steps: 0}",
                     "{name: b, steps: 5, lr: 2.0, warmup_steps: 2, decay: constant}")
    assert lrs[:5] == [1.0] * 5 and lrs[5:7] == pytest.approx([1.0, 2.0]) and lrs[7:] == [2.0] * 3
    again, _, _ = _lrs("{name: a, steps: 5, lr: 1.0, decay: constant, warmup_steps: 0}",
                       "{name: b, steps: 5, lr: 2.0, warmup_steps: 2, decay: constant}")
    assert again == lrs


def test_step_decay_halves_every_interval_down_to_the_floor():
    """Ovis2.5 P5's schedule: 5e-6 halved every 1K steps, never below 1e-7."""
    from omni_mega.config import load_config
    from omni_mega.training.curriculum import LRPlan

    cfg = load_config(None, ["stages=[{name: p5, steps: 8000, lr: 5.0e-6, min_lr: 1.0e-7, warmup_steps: 0, "
                             "decay: step, decay_steps: 1000}]"])
    plan = LRPlan(cfg)
    assert [plan.lr(k) for k in (0, 999, 1000, 2500, 5999)] == [5e-6, 5e-6, 2.5e-6, 1.25e-6, 5e-6 / 32]
    assert plan.lr(7999) == 1e-7  # 5e-6 / 128 = 3.9e-8 is below the floor
