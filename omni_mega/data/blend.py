"""Stage blends: mixture weights over named data sources, set per curriculum stage, optionally ramping linearly
inside a stage (the multimodal ratio uses the ramp).

A `BlendSchedule` is a list of `StageMix`es laid end to end in samples. At global sample `i` inside a stage that
starts at sample `s0` and lasts `n` samples, the weight of a source is
    w(i) = start + (end - start) * (i - s0) / n            (end = start when no ramp is given)
normalized over the sources. After the last stage the last stage's end weights hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StageMix:
    """Mixture of one stage."""

    name: str  # stage name (for logs and configs)
    num_samples: int  # length of the stage in samples (global, all data-parallel ranks together)
    weights: dict[str, float]  # source -> weight at the start of the stage (any positive scale; normalized)
    end_weights: dict[str, float] | None = None  # source -> weight at the end; None = constant over the stage

    def __post_init__(self) -> None:
        if int(self.num_samples) <= 0:
            raise ValueError(f"StageMix {self.name!r}: num_samples must be > 0, got {self.num_samples}")
        for label, w in (("weights", self.weights), ("end_weights", self.end_weights)):
            if w is None:
                continue
            bad = {k: v for k, v in w.items() if not (float(v) >= 0 and np.isfinite(float(v)))}
            if bad or not w or sum(float(v) for v in w.values()) <= 0:
                raise ValueError(f"StageMix {self.name!r}: {label} must be non-negative with a positive sum, got {w}")

    def sources(self) -> list[str]:
        names = list(self.weights)
        return names + [k for k in (self.end_weights or {}) if k not in self.weights]


@dataclass
class BlendSchedule:
    """Stages end to end; `weights_at(i)` gives the normalized weights (float64 [num_sources]) at global sample i."""

    stages: list[StageMix]
    sources: list[str] = field(default_factory=list)  # source order for arrays; default: order of first appearance

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("BlendSchedule needs at least one stage")
        seen = list(self.sources)
        for stage in self.stages:
            seen += [s for s in stage.sources() if s not in seen]
        self.sources = seen
        self._starts = np.cumsum([0] + [int(s.num_samples) for s in self.stages])
        self._start_w = [self._vector(s.weights) for s in self.stages]
        self._end_w = [self._vector(s.end_weights or s.weights) for s in self.stages]

    def _vector(self, weights: dict[str, float]) -> np.ndarray:
        return np.array([float(weights.get(s, 0.0)) for s in self.sources], dtype=np.float64)

    @property
    def total_samples(self) -> int:
        return int(self._starts[-1])

    def stage_index(self, i: int) -> int:
        """Index of the stage holding global sample i (the last stage past the end)."""
        return min(int(np.searchsorted(self._starts, i, side="right")) - 1, len(self.stages) - 1)

    def weights_at(self, i: int) -> np.ndarray:
        k = self.stage_index(i)
        frac = min(max((i - self._starts[k]) / self.stages[k].num_samples, 0.0), 1.0)
        w = self._start_w[k] + (self._end_w[k] - self._start_w[k]) * frac
        return w / w.sum()

    @classmethod
    def constant(cls, weights: dict[str, float], num_samples: int = 1) -> "BlendSchedule":
        """One stage with fixed weights (holds past num_samples too)."""
        return cls([StageMix("constant", num_samples, dict(weights))])

    def to_dict(self) -> dict:
        return {"sources": list(self.sources), "stages": [
            {"name": s.name, "num_samples": int(s.num_samples), "weights": dict(s.weights),
             "end_weights": dict(s.end_weights) if s.end_weights else None} for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict) -> "BlendSchedule":
        return cls([StageMix(**s) for s in d["stages"]], list(d.get("sources", [])))
