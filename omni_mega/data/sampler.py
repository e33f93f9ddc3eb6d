"""Deterministic blend sampler: which source, and which sample of it, comes next; resumable exactly.

Choice of source: each step adds the schedule's weights (summing to 1) to a per-source credit and takes the source
with the largest credit, which then pays 1 (ties go to the earlier source). This is the low-discrepancy rule of
megatron-core's BlendedDataset, extended to weights that change per sample: after n samples every source's count is
within a few samples of the summed weights, whatever n (so a 1% tolerance holds from a few hundred samples on).

Choice of sample inside a source: a permutation of the source's indices per epoch, drawn from
numpy.random.default_rng((seed, source number, epoch)), so the order depends only on the seed.

State (`state_dict`): step, per-source counts and credits (floats, saved exactly). Restoring it in a new process
and drawing continues the same sequence as an uninterrupted sampler with the same schedule, sizes and seed.
"""

from __future__ import annotations

import numpy as np

from omni_mega.data.blend import BlendSchedule


class BlendSampler:
    """Yields (source name, index into that source) forever.

    schedule: BlendSchedule; sizes: source -> number of samples it has (> 0 for every source that gets weight);
    seed: int; shuffle: permute each source's indices per epoch (False: 0, 1, 2, ... cycling).
    """

    def __init__(self, schedule: BlendSchedule, sizes: dict[str, int], seed: int = 1234, shuffle: bool = True):
        missing = [s for s in schedule.sources if s not in sizes]
        if missing:
            raise ValueError(f"BlendSampler: sizes has no entry for sources {missing} (got {sorted(sizes)})")
        self.schedule, self.seed, self.shuffle = schedule, int(seed), shuffle
        self.names = list(schedule.sources)
        self.sizes = np.array([int(sizes[s]) for s in self.names], dtype=np.int64)
        self.step = 0
        self.counts = np.zeros(len(self.names), dtype=np.int64)
        self.credit = np.zeros(len(self.names), dtype=np.float64)
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _index_in_source(self, k: int, drawn: int) -> int:
        size = int(self.sizes[k])
        if size <= 0:
            raise ValueError(f"BlendSampler: source {self.names[k]!r} has weight but no samples")
        epoch, pos = divmod(drawn, size)
        if not self.shuffle:
            return pos
        key = (k, epoch)
        if key not in self._perm_cache:
            self._perm_cache = {kk: v for kk, v in self._perm_cache.items() if kk[0] != k}  # one epoch per source
            self._perm_cache[key] = np.random.default_rng((self.seed, k, epoch)).permutation(size)
        return int(self._perm_cache[key][pos])

    def next(self) -> tuple[str, int]:
        self.credit += self.schedule.weights_at(self.step)
        k = int(np.argmax(self.credit))
        self.credit[k] -= 1.0
        index = self._index_in_source(k, int(self.counts[k]))
        self.counts[k] += 1
        self.step += 1
        return self.names[k], index

    def __iter__(self):
        return self

    __next__ = next

    def state_dict(self) -> dict:
        return {"step": self.step, "names": list(self.names), "counts": self.counts.tolist(),
                "credit": self.credit.tolist(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(f"BlendSampler.load_state_dict: sources {state['names']} != {self.names}")
        if int(state["seed"]) != self.seed:
            raise ValueError(f"BlendSampler.load_state_dict: seed {state['seed']} != {self.seed}")
        self.step = int(state["step"])
        self.counts = np.array(state["counts"], dtype=np.int64)
        self.credit = np.array(state["credit"], dtype=np.float64)
