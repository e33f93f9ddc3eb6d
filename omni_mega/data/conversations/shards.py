"""Conversation shards: WebDataset-style tars with a sidecar index, for samples made of token sequences with
per-token loss masks and the images they show (supervised conversations, preference pairs, prompts with answers).

A dataset directory (the same discipline as the image-text shards, `multimodal.shards`):
```
dataset.json          {"format": "omni_mega.convshards", "version": 1, "kind": "sft" | "preference" | "prompts",
                       "samples": N, "shards": [...], "tokenizer": {...}, "template": ..., "bad_input": {...}, ...}
shard-00000.tar       per sample, in order, members sharing its key:
                        00000042.seq0.ids   int32 little-endian token ids; an image is one IMAGE_MARK (-1) id,
                                            expanded into its visual placeholders when packed at the stage's size
                        00000042.seq0.mask  uint8, 1 where the token is a supervised target
                        (seq1.* for a preference pair: seq0 = prompt + chosen, seq1 = prompt + rejected)
                        00000042.img0.png   the images as given, in the order their marks appear
                        00000042.json       {"source": "file.jsonl:7", "images": [[h, w], ...], ... (e.g. "answer")}
shard-00000.idx.npz   three tables (numpy, no pickle): samples (key, first sequence, sequence count, first image,
                      image count, json offset/size), sequences (ids and mask offsets, length), images (offset, size,
                      height, width)
```
`ConvShardDataset[i]` reads a sample with one pread per member; `meta(i)` gives sequence lengths and image sizes from
the index alone (what the packer plans with). Writes are atomic: temp names, `dataset.json` last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omni_mega.data.multimodal.shards import image_ext
from omni_mega.data.shard_io import ShardReader, ShardWriter

FORMAT, VERSION = "omni_mega.convshards", 1
IMAGE_MARK = -1  # an image's place in stored token ids
KINDS = ("sft", "preference", "prompts")
SAMPLE_DTYPE = np.dtype([("key", "S32"), ("seq_first", "<i8"), ("seq_count", "<i4"), ("img_first", "<i8"),
                         ("img_count", "<i4"), ("json_offset", "<i8"), ("json_size", "<i8")])
SEQ_DTYPE = np.dtype([("ids_offset", "<i8"), ("mask_offset", "<i8"), ("length", "<i4")])
IMG_DTYPE = np.dtype([("offset", "<i8"), ("size", "<i8"), ("height", "<i4"), ("width", "<i4")])


@dataclass
class Sequence:
    ids: np.ndarray  # int32 [L], IMAGE_MARK where an image goes
    mask: np.ndarray  # uint8 [L], 1 = supervised target


@dataclass
class ConvSample:
    key: str
    sequences: list[Sequence]
    images: list[bytes]  # encoded, in mark order
    meta: dict = field(default_factory=dict)  # source, image sizes, and e.g. the answer of a prompt


class ConvShardWriter(ShardWriter):
    """Writes samples in the order given into shards of `shard_size` samples under `out_dir` (a context manager:
    an exception removes every temporary file and leaves no dataset.json)."""

    FORMAT, VERSION = FORMAT, VERSION
    INDEX_EXT = "idx.npz"

    def __init__(self, out_dir: str | Path, kind: str, tokenizer: dict, shard_size: int = 1000) -> None:
        if kind not in KINDS:
            raise ValueError(f"ConvShardWriter: kind must be one of {KINDS}, got {kind!r}")
        super().__init__(out_dir, tokenizer, shard_size)
        self.kind = kind
        self._rows: dict[str, list] = {"samples": [], "sequences": [], "images": []}

    def add(self, sequences: list[Sequence], images: list[tuple[bytes, int, int]], meta: dict | None = None) -> str:
        """Appends one sample: its sequences and its images as (bytes, height, width). Returns its key."""
        marks = [int((np.asarray(s.ids) == IMAGE_MARK).sum()) for s in sequences]
        if not sequences or any(m != len(images) for m in marks):
            raise ValueError(f"ConvShardWriter.add: every sequence must mark each of the {len(images)} images once, "
                             f"got marks {marks}")
        key = self._key(None)
        seq0, img0 = len(self._rows["sequences"]), len(self._rows["images"])
        for k, s in enumerate(sequences):
            ids, mask = np.asarray(s.ids, dtype="<i4"), np.asarray(s.mask, dtype=np.uint8)
            if ids.shape != mask.shape or ids.ndim != 1:
                raise ValueError(f"ConvShardWriter.add: ids {ids.shape} and mask {mask.shape} must be equal 1-D")
            self._rows["sequences"].append((self._member(f"{key}.seq{k}.ids", ids.tobytes()),
                                            self._member(f"{key}.seq{k}.mask", mask.tobytes()), ids.size))
        for k, (data, h, w) in enumerate(images):
            self._rows["images"].append((self._member(f"{key}.img{k}.{image_ext(data)}", data), len(data), h, w))
        info = json.dumps({**(meta or {}), "images": [[h, w] for _, h, w in images]}, sort_keys=True).encode()
        self._rows["samples"].append((key.encode(), seq0, len(sequences), img0, len(images),
                                      self._member(f"{key}.json", info), len(info)))
        self._added()
        return key

    def _index_tables(self) -> dict[str, np.ndarray]:
        tables = {k: np.array(rows, dtype=dt) for (k, rows), dt in zip(self._rows.items(),
                                                                        (SAMPLE_DTYPE, SEQ_DTYPE, IMG_DTYPE))}
        self._rows = {"samples": [], "sequences": [], "images": []}
        return tables

    def _header(self) -> dict:
        return {"kind": self.kind}


class ConvShardDataset(ShardReader):
    """Random access to a directory written by ConvShardWriter (`tools/preprocess_conversations.py`).

    `kind`, `tokenizer` and `info` (dataset.json); `meta(i)` -> (sequence lengths, [(height, width)] per image)
    from the index; `ds[i]` -> ConvSample. File descriptors are opened per process (safe in forked workers and
    threads)."""

    FORMAT, VERSION = FORMAT, VERSION
    WHAT = "conversation dataset"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.kind = self.info["kind"]
        self._tables = self._index

    def _load_index(self, shard: dict) -> dict[str, np.ndarray]:
        with np.load(self.path / shard["index"], allow_pickle=False) as z:
            tables = {k: z[k] for k in ("samples", "sequences", "images")}
        for k, dt in (("samples", SAMPLE_DTYPE), ("sequences", SEQ_DTYPE), ("images", IMG_DTYPE)):
            self._check_rows(shard, tables[k], dt, f"[{k}]")
        s, q, m = tables["samples"], tables["sequences"], tables["images"]
        end = max(int((s["json_offset"] + s["json_size"]).max(initial=0)), int((m["offset"] + m["size"]).max(initial=0)),
                  int((q["mask_offset"] + q["length"]).max(initial=0)))
        self._check_tar(shard, len(s), end)
        return tables

    @property
    def has_images(self) -> bool:
        return any(len(t["images"]) for t in self._tables)

    @property
    def sequences_per_sample(self) -> int:
        """2 for preference pairs (chosen, rejected), else 1."""
        return 2 if self.kind == "preference" else 1

    def _row(self, i: int) -> tuple[int, np.void]:
        s, r = self._locate(i)
        return s, self._tables[s]["samples"][r]

    def meta(self, i: int) -> tuple[list[int], list[tuple[int, int]]]:
        """(token count of each sequence, (height, width) of each image), from the index."""
        s, row = self._row(i)
        t = self._tables[s]
        seqs = t["sequences"][int(row["seq_first"]):int(row["seq_first"]) + int(row["seq_count"])]
        imgs = t["images"][int(row["img_first"]):int(row["img_first"]) + int(row["img_count"])]
        return [int(x) for x in seqs["length"]], [(int(h), int(w)) for h, w in zip(imgs["height"], imgs["width"])]

    def __getitem__(self, i: int) -> ConvSample:
        s, row = self._row(i)
        t = self._tables[s]
        sequences = []
        for q in t["sequences"][int(row["seq_first"]):int(row["seq_first"]) + int(row["seq_count"])]:
            n = int(q["length"])
            ids = np.frombuffer(self._read(s, int(q["ids_offset"]), 4 * n), dtype="<i4").astype(np.int64)
            mask = np.frombuffer(self._read(s, int(q["mask_offset"]), n), dtype=np.uint8).copy()
            sequences.append(Sequence(ids, mask))
        images = [self._read(s, int(m["offset"]), int(m["size"]))
                  for m in t["images"][int(row["img_first"]):int(row["img_first"]) + int(row["img_count"])]]
        meta = json.loads(self._read(s, int(row["json_offset"]), int(row["json_size"])))
        return ConvSample(row["key"].decode(), sequences, images, meta)
