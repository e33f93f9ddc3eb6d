"""Built-in demo text: English from `pydoc_data.topics` (ships with Python), byte-level tokens, nothing downloaded.

Sample `i` is a window of `seq_length + 1` bytes at an offset drawn from a generator seeded by (seed, i), so any
sample, and therefore any position in the data stream, is reproducible from its index alone: resuming needs only the
number of samples consumed.
"""

from __future__ import annotations

import functools

import torch

EOD = 256  # end-of-document id after the 256 byte values
VOCAB_SIZE = 257


@functools.cache
def corpus_tokens() -> torch.Tensor:
    from pydoc_data.topics import topics

    docs = [topics[k].encode("utf-8") for k in sorted(topics)]
    ids: list[int] = []
    for d in docs:
        ids.extend(d)
        ids.append(EOD)
    return torch.tensor(ids, dtype=torch.int64)


def sample(index: int, seq_length: int, seed: int) -> torch.Tensor:
    """Tokens [seq_length + 1] of sample `index`."""
    data = corpus_tokens()
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    start = int(torch.randint(0, data.numel() - seq_length - 1, (1,), generator=g))
    return data[start : start + seq_length + 1]


def micro_batch(first_index: int, batch: int, seq_length: int, seed: int) -> dict[str, torch.Tensor]:
    """{"tokens", "labels" int64 [b, s], "loss_mask" float32 [b, s], "position_ids" int64 [b, s]} of samples
    first_index .. first_index + batch - 1."""
    rows = torch.stack([sample(first_index + j, seq_length, seed) for j in range(batch)])
    return {
        "tokens": rows[:, :-1].contiguous(),
        "labels": rows[:, 1:].contiguous(),
        "loss_mask": torch.ones(batch, seq_length, dtype=torch.float32),
        "position_ids": torch.arange(seq_length).unsqueeze(0).expand(batch, -1).contiguous(),
    }


def decode(ids: list[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
