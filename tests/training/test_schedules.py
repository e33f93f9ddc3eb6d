import math

import pytest

from omni_mega.config import OptimConfig
from omni_mega.training.schedules import lr_at


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
