"""The trainer's data source: a stage's weighted mix over demo datasets, index-addressed (resume = a sample count),
and data-parallel slices that partition each global batch."""

import torch

from omni_mega.config.schema import DatasetConfig
from omni_mega.training.data_source import MixSource, StepSlice

MIX = [DatasetConfig(name="a", seed=1, weight=0.7), DatasetConfig(name="b", seed=2, weight=0.2),
       DatasetConfig(name="c", seed=3, weight=0.1)]


def test_mix_follows_the_weights():
    src = MixSource(MIX, seed=11)
    picks = torch.tensor([src.dataset_of(g) for g in range(4000)])
    frac = torch.bincount(picks, minlength=3).double() / picks.numel()
    assert torch.allclose(frac, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=0.03), frac
    # The seed decides the order, not the proportions.
    other = torch.tensor([MixSource(MIX, seed=12).dataset_of(g) for g in range(4000)])
    assert not torch.equal(picks, other)


def test_samples_are_addressed_by_index():
    a, b = MixSource(MIX, seed=5), MixSource(MIX, seed=5)
    for g in (0, 7, 1234):
        assert torch.equal(a.sample(g, 17), b.sample(g, 17)) and a.sample(g, 17).shape == (18,)
    # The same index in two datasets of the mix gives different windows (they are different datasets).
    one, two = MixSource(MIX[:1], seed=5), MixSource(MIX[1:2], seed=5)
    assert not torch.equal(one.sample(3, 32), two.sample(3, 32))


def test_resume_state_and_data_parallel_slices():
    full = MixSource(MIX, seed=3, consumed_samples=40)
    whole = list(full.micro_batches(StepSlice(0, 1, num_micro=4, micro_batch_size=2, seq_length=9)))
    parts = [list(MixSource(MIX, seed=3, consumed_samples=40).micro_batches(StepSlice(r, 2, 2, 2, 9)))
             for r in range(2)]
    cat = lambda mbs: torch.cat([m["tokens"] for m in mbs])  # noqa: E731
    assert torch.equal(cat(whole), torch.cat([cat(parts[0]), cat(parts[1])]))  # the ranks partition the batch
    mb = whole[0]
    assert mb["tokens"].shape == mb["labels"].shape == mb["position_ids"].shape == (2, 9)
    assert torch.equal(mb["tokens"][:, 1:], mb["labels"][:, :-1]) and mb["loss_mask"].dtype == torch.float32
    full.advance(8)
    restored = MixSource(MIX, seed=3)
    restored.load_state_dict(full.state_dict())
    nxt = StepSlice(0, 1, 1, 2, 9)
    assert torch.equal(next(restored.micro_batches(nxt))["tokens"], next(full.micro_batches(nxt))["tokens"])
    assert restored.consumed_samples == 48


def test_indexed_prefix_in_the_mix(tmp_path):
    """A Megatron .bin/.idx prefix as a mix member: windows of whole documents concatenated in order."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    docs = [torch.arange(100 * i, 100 * i + n, dtype=torch.int32) for i, n in enumerate((5, 11, 3, 7))]
    prefix = str(tmp_path / "tiny")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for d in docs:
        builder.add_document(d, [d.numel()])
    builder.finalize(prefix + ".idx")
    src = MixSource([DatasetConfig(name="idx", source="indexed", path=prefix, seed=4)], seed=0)
    stream = torch.cat(docs * 3).long()
    for g in range(6):
        s = src.sample(g, 12)
        assert s.shape == (13,) and s.dtype == torch.int64
        start = int((stream == s[0]).nonzero()[0])  # every value occurs once per copy: locate the window
        assert torch.equal(s, stream[start:start + 13]) and int(s[0]) % 100 == 0  # starts at a document start
