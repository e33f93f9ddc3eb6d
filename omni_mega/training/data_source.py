"""The trainer's data interface (`BatchSource`) and its implementation over the built-in demo text.

The trainer asks a source for the micro-batches of one data-parallel rank for one optimizer step, and saves
`state_dict()` in every checkpoint. `MixSource` draws sample `g` (the g-th sample of the run, over all ranks) from
dataset `d(g)` of the stage's weighted mix, where `d(g)` comes from a generator seeded by (seed, g): any sample is
reproducible from its index alone, so exact resume needs only the consumed-sample count.

Plugging the data issue's blend/sampler in: implement `BatchSource` over `omni_mega.data.sampler.BlendSampler`
(its `state_dict` carries counts and credits), build one per stage in `build_source` from `StagePlan.mix`, and keep
the contract: `micro_batches` must return the same samples for the same state, on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from omni_mega.config.schema import DatasetConfig
from omni_mega.data import demo_text


@dataclass(frozen=True)
class StepSlice:
    """What one data-parallel rank consumes in one optimizer step."""

    dp_rank: int
    dp: int
    num_micro: int  # micro-batches per rank per step
    micro_batch_size: int
    seq_length: int

    @property
    def global_batch(self) -> int:
        return self.dp * self.num_micro * self.micro_batch_size


class BatchSource(Protocol):
    consumed_samples: int  # samples of the whole run consumed so far (all ranks)

    def micro_batches(self, sl: StepSlice) -> Iterator[dict[str, torch.Tensor]]:
        """Yields num_micro dicts {"tokens", "labels": int64 [b, s], "loss_mask": float32 [b, s],
        "position_ids": int64 [b, s]} for this rank's slice of the next step; then call `advance`."""

    def advance(self, samples: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class MixSource:
    """Weighted mix over demo_text datasets (a seed each) and Megatron indexed prefixes, index-addressed."""

    def __init__(self, mix: list[DatasetConfig], seed: int, consumed_samples: int = 0) -> None:
        self.mix, self.seed, self.consumed_samples = mix, seed, consumed_samples
        w = torch.tensor([d.weight for d in mix], dtype=torch.float64)
        self.cum = torch.cumsum(w / w.sum(), 0)
        self._indexed: dict[str, object] = {}

    def dataset_of(self, g: int) -> int:
        """Which dataset of the mix global sample `g` comes from."""
        if len(self.mix) == 1:
            return 0
        u = torch.rand(1, generator=torch.Generator().manual_seed(self.seed * 7919 + g), dtype=torch.float64)
        return min(int(torch.searchsorted(self.cum, u).item()), len(self.mix) - 1)

    def sample(self, g: int, seq_length: int) -> torch.Tensor:
        """int64 [seq_length + 1] tokens of global sample g."""
        d = self.mix[self.dataset_of(g)]
        if d.source == "demo_text":
            return demo_text.sample(g, seq_length, d.seed)
        return self._indexed_sample(d, g, seq_length)

    def _indexed_sample(self, d: DatasetConfig, g: int, seq_length: int) -> torch.Tensor:
        # Documents from a seeded random start, concatenated until the window is full.
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        ds = self._indexed.get(d.path)
        if ds is None:
            ds = self._indexed[d.path] = IndexedDataset(d.path)
        doc = int(torch.randint(0, len(ds), (1,), generator=torch.Generator().manual_seed(d.seed * 1_000_003 + g)))
        parts, have = [], 0
        while have < seq_length + 1:
            t = torch.as_tensor(ds[doc % len(ds)].astype("int64"))
            parts.append(t)
            have += t.numel()
            doc += 1
        return torch.cat(parts)[: seq_length + 1]

    def micro_batches(self, sl: StepSlice) -> Iterator[dict[str, torch.Tensor]]:
        base = self.consumed_samples + sl.dp_rank * sl.num_micro * sl.micro_batch_size
        for k in range(sl.num_micro):
            first = base + k * sl.micro_batch_size
            rows = torch.stack([self.sample(first + j, sl.seq_length) for j in range(sl.micro_batch_size)])
            b, s = rows.shape[0], sl.seq_length
            yield {
                "tokens": rows[:, :-1].contiguous(), "labels": rows[:, 1:].contiguous(),
                "loss_mask": torch.ones(b, s, dtype=torch.float32),
                "position_ids": torch.arange(s).unsqueeze(0).expand(b, -1).contiguous(),
            }

    def advance(self, samples: int) -> None:
        self.consumed_samples += samples

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = int(state["consumed_samples"])


def build_source(mix: list[DatasetConfig], seed: int, consumed_samples: int) -> BatchSource:
    return MixSource(mix, seed, consumed_samples)
