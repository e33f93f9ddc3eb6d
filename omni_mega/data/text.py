"""GPT text batches from Megatron indexed datasets: packed THD micro-batches or plain [b, S] batches.

Samples come from megatron-core's `GPTDataset`, built by `BlendedMegatronDatasetBuilder` (its document/sample/
shuffle indices are cached under `cache_dir`, or next to the data). A GPTDataset sample is a window of S + 1 tokens
over the documents laid end to end (each document ends with EOD when preprocessed with `--append-eod`); only the
last window of a split can hold padding. Sources are mixed per stage by `BlendSampler` (sampler.py, blend.py).

The batch contract (what `PackedTextBatches` yields; all CPU tensors):

packed=True (THD; micro-batch size 1, one packed sequence of S tokens):
    tokens        int64   [1, S]    input ids (padding, if any, is 0)
    labels        int64   [1, S]    next-token targets: labels[0, t] = the token after tokens[0, t]
    loss_mask     float32 [1, S]    1.0 where the loss counts; 0.0 on padding (and on EOD when eod_mask_loss)
    position_ids  int64   [1, S]    restart at 0 at every segment start (a window that begins inside a document
                                    starts that document's part at 0 too)
    cu_seqlens    int32   [n + 1]   0, end of segment 1, ..., S: a segment ends after each EOD token, so attention
                                    restricted to segments (megatron `PackedSeqParams(qkv_format="thd")`) never
                                    crosses a document boundary
    max_seqlen    int               longest segment (for the attention kernel)
packed=False (plain; b = micro_batch_size; causal attention over the whole sequence):
    tokens, labels int64 [b, S]; loss_mask float32 [b, S]; position_ids int64 [b, S] = 0..S-1 per row.
Both also carry `source`: list[str] of length b (1 when packed), the blend source of each row.

`PackedTextBatches.state_dict()` / `load_state_dict()` resume exactly: the batches after a restore equal those an
uninterrupted run would have produced. With data parallelism every rank runs the same sampler and keeps its slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omni_mega.data.blend import BlendSchedule
from omni_mega.data.sampler import BlendSampler


@dataclass
class TextDataConfig:
    """What the GPT datasets are built with."""

    seq_length: int  # S: tokens per packed sequence / per row
    seed: int = 1234  # shuffling seed (GPTDataset indices and the blend sampler)
    split: str = "100,0,0"  # train,valid,test shares of each source's documents (Megatron's --split)
    cache_dir: str | None = None  # where GPTDataset caches its indices; None: next to the data
    eod_mask_loss: bool = False  # no loss on EOD positions (Megatron's --eod-mask-loss)

    def __post_init__(self) -> None:
        if int(self.seq_length) < 2:
            raise ValueError(f"TextDataConfig: seq_length must be >= 2, got {self.seq_length}")


def gpt_dataset_config(tokenizer, cfg: TextDataConfig, blend=None):
    """megatron-core GPTDatasetConfig for our tokenizer (needs .vocab_size, .eod, .unique_identifiers)."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(random_seed=cfg.seed, sequence_length=cfg.seq_length, blend=blend, split=cfg.split,
                            path_to_cache=cfg.cache_dir, tokenizer=tokenizer, reset_position_ids=False,
                            reset_attention_mask=False, eod_mask_loss=cfg.eod_mask_loss, create_attention_mask=False)


def build_text_dataset(prefixes: list[str] | str, tokenizer, cfg: TextDataConfig, num_samples: int,
                       weights: list[float] | None = None, split: str = "train"):
    """One map-style GPT dataset (a GPTDataset, or megatron's BlendedDataset over several prefixes with fixed
    `weights`) with at least `num_samples` samples of the given split. Single-process safe: megatron's builder
    only calls torch.distributed when it is initialized."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    which = {"train": 0, "valid": 1, "test": 2}[split]
    sizes = [None, None, None]
    sizes[which] = int(num_samples)
    config = gpt_dataset_config(tokenizer, cfg, blend=(prefixes, weights))
    datasets = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    if datasets[which] is None:
        raise ValueError(f"build_text_dataset: split {split!r} is empty with split={cfg.split!r} for {prefixes}")
    return datasets[which]


def build_text_sources(sources: dict[str, str], tokenizer, cfg: TextDataConfig, num_samples: int) -> dict:
    """name -> GPTDataset (train split) for every source prefix; each has at least num_samples samples."""
    return {name: build_text_dataset(prefix, tokenizer, cfg, num_samples) for name, prefix in sources.items()}


def segment_bounds(tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """cu_seqlens (int32 [n+1]) of a 1-D token sequence: a segment ends right after each EOD token."""
    S = tokens.numel()
    ends = (tokens == eod).nonzero().flatten() + 1
    ends = ends[ends < S]
    return torch.cat([torch.zeros(1, dtype=torch.int64), ends, torch.tensor([S])]).to(torch.int32)


def positions_from_bounds(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """int64 [S]: 0, 1, ... restarting at every segment start."""
    starts = cu_seqlens[:-1].long()
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    S = int(cu_seqlens[-1])
    return torch.arange(S, dtype=torch.int64) - torch.repeat_interleave(starts, lengths)


def packed_micro_batch(sample: dict, eod: int) -> dict:
    """One GPTDataset sample -> the packed THD micro-batch of the module docstring."""
    tokens = sample["tokens"].long()
    cu = segment_bounds(tokens, eod)
    return {"tokens": tokens[None], "labels": sample["labels"].long()[None],
            "loss_mask": sample["loss_mask"].float()[None], "position_ids": positions_from_bounds(cu)[None],
            "cu_seqlens": cu, "max_seqlen": int((cu[1:] - cu[:-1]).max())}


def plain_batch(samples: list[dict]) -> dict:
    """GPTDataset samples -> [b, S] tensors with positions 0..S-1 (attention over the whole sequence)."""
    tokens = torch.stack([s["tokens"].long() for s in samples])
    return {"tokens": tokens, "labels": torch.stack([s["labels"].long() for s in samples]),
            "loss_mask": torch.stack([s["loss_mask"].float() for s in samples]),
            "position_ids": torch.arange(tokens.shape[1], dtype=torch.int64).expand_as(tokens).contiguous()}


def to_packed_seq_params(batch: dict):
    """megatron PackedSeqParams for a packed micro-batch (THD, self-attention: q and kv bounds are the same)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = batch["cu_seqlens"]
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=batch["max_seqlen"],
                           max_seqlen_kv=batch["max_seqlen"])


class PackedTextBatches:
    """Iterator of micro-batches mixed from named GPT datasets by a BlendSchedule.

    sources: name -> map-style dataset returning GPTDataset dicts; schedule: BlendSchedule over those names (or a
    dict of fixed weights); eod: end-of-document id; packed: THD (micro_batch_size must be 1) or plain [b, S];
    dp_rank/dp_size: this rank's slice of each global step (every rank draws dp_size * micro_batch_size samples).
    """

    def __init__(self, sources: dict, schedule: BlendSchedule | dict, eod: int, *, packed: bool = True,
                 micro_batch_size: int = 1, seed: int = 1234, dp_rank: int = 0, dp_size: int = 1):
        if packed and micro_batch_size != 1:
            raise ValueError(f"PackedTextBatches: packed batches hold one sequence, micro_batch_size must be 1, "
                             f"got {micro_batch_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"PackedTextBatches: need 0 <= dp_rank < dp_size, got {dp_rank}, {dp_size}")
        if isinstance(schedule, dict):
            schedule = BlendSchedule.constant(schedule)
        self.sources, self.eod, self.packed = sources, int(eod), packed
        self.micro_batch_size, self.dp_rank, self.dp_size = int(micro_batch_size), dp_rank, dp_size
        self.sampler = BlendSampler(schedule, {k: len(v) for k, v in sources.items()}, seed=seed)
        self.batches = 0
        self.tokens_seen = 0
        self.real_tokens_seen = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        draws = [self.sampler.next() for _ in range(self.micro_batch_size * self.dp_size)]
        mine = draws[self.dp_rank * self.micro_batch_size:(self.dp_rank + 1) * self.micro_batch_size]
        samples = [self.sources[name][int(i)] for name, i in mine]
        batch = packed_micro_batch(samples[0], self.eod) if self.packed else plain_batch(samples)
        batch["source"] = [name for name, _ in mine]
        # Padding is where GPTDataset masked the loss on something other than EOD.
        real = (batch["loss_mask"] > 0) | (batch["tokens"] == self.eod)
        self.tokens_seen += real.numel()
        self.real_tokens_seen += int(real.sum())
        self.batches += 1
        return batch

    @property
    def non_pad_fraction(self) -> float:
        return self.real_tokens_seen / max(self.tokens_seen, 1)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "batches": self.batches, "tokens_seen": self.tokens_seen,
                "real_tokens_seen": self.real_tokens_seen}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.batches, self.tokens_seen = int(state["batches"]), int(state["tokens_seen"])
        self.real_tokens_seen = int(state["real_tokens_seen"])


def demo_text_batches(work_dir: str, seq_length: int = 256, *, packed: bool = True, micro_batch_size: int = 1,
                      num_samples: int = 1000, seed: int = 1234, tokenizer=None) -> PackedTextBatches:
    """Everything from the embedded demo corpus: demo tokenizer, preprocessing into work_dir, GPTDataset, batches."""
    import os

    from omni_mega.data import preprocess
    from omni_mega.data.corpus import write_demo_jsonl
    from omni_mega.data.tokenizer import demo_tokenizer

    tok = tokenizer or demo_tokenizer(os.path.join(work_dir, "tokenizer"))
    prefix = os.path.join(work_dir, "demo")
    if not os.path.exists(f"{prefix}_text_document.idx"):
        inp = write_demo_jsonl(os.path.join(work_dir, "demo.jsonl"))
        preprocess.main(["--input", inp, "--output-prefix", prefix, "--tokenizer-type", "HuggingFaceTokenizer",
                         "--tokenizer-model", tok.tokenizer_model, "--append-eod", "--workers", "1"])
    cfg = TextDataConfig(seq_length=seq_length, seed=seed, cache_dir=os.path.join(work_dir, "cache"))
    sources = build_text_sources({"demo": f"{prefix}_text_document"}, tok, cfg, num_samples)
    return PackedTextBatches(sources, {"demo": 1.0}, tok.eod, packed=packed, micro_batch_size=micro_batch_size,
                             seed=seed)
