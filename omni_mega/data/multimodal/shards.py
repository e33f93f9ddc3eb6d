"""Image-text shards: WebDataset-style tar files plus a numpy sidecar index per shard and one `dataset.json`.

Layout of a dataset directory (see docs/multimodal_data.md for why):
```
dataset.json            format, version, shard list, sample count, tokenizer identity, bad-input report, stats
shard-00000.tar         per sample, in order: {key}.{jpg|png|...} (image bytes as given), {key}.ids (int32
                        little-endian token ids, no EOD, no placeholders), {key}.txt (UTF-8 text), {key}.json
shard-00000.idx.npy     one record per sample (INDEX_DTYPE): key, data offsets/sizes of the image, ids and txt
                        members, image height/width, token count
```
A plain `tarfile`/WebDataset reader sees ordinary samples grouped by key; `MMShardDataset` seeks with the index
instead, so `ds[i]` is O(1) and `ds.meta(i)` never opens an image.

Writes are atomic (`data.shard_io`): shards and indexes under `*.tmp-<pid>` names, renamed when the writer finishes,
`dataset.json` written last and removed first, so a crashed or interrupted run never leaves a directory that
`MMShardDataset` accepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from omni_mega.data.demo.text import EOD, VOCAB_SIZE
from omni_mega.data.shard_io import ShardReader, ShardWriter, checked_ids

FORMAT, VERSION = "omni_mega.mmshards", 1
BYTE_TOKENIZER = {"kind": "byte", "vocab_size": VOCAB_SIZE, "eod": EOD}  # the built-in byte ids (demo data)
INDEX_DTYPE = np.dtype([("key", "S32"), ("image_offset", "<i8"), ("image_size", "<i8"), ("ids_offset", "<i8"),
                        ("num_tokens", "<i4"), ("txt_offset", "<i8"), ("txt_size", "<i8"),
                        ("height", "<i4"), ("width", "<i4")])
_MAGIC_EXT = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"),
              (b"II*\x00", "tif"), (b"MM\x00*", "tif"))


class ImageTextRecord(NamedTuple):
    key: str  # stable sample id, e.g. "00000042"
    image: bytes  # encoded image bytes as stored (JPEG/PNG/...)
    tokens: np.ndarray  # int32 [L] text token ids, no EOD, no placeholders


def image_ext(data: bytes) -> str:
    """File extension for encoded image bytes, from their magic number ("img" when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _MAGIC_EXT if data.startswith(magic)), "img")


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, EOD = 256 (the demo's tokens). Same interface as omni_mega.data.text.tokenizer."""

    vocab_size, eod = 257, 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def tokenizer_identity(tok) -> dict:
    """The `tokenizer` entry of dataset.json: kind, vocab_size, eod (+ the tokenizer's unique identifiers)."""
    if isinstance(tok, ByteTokenizer):
        return dict(BYTE_TOKENIZER)
    ident = dict(getattr(tok, "unique_identifiers", {}))
    return {"kind": ident.pop("class", type(tok).__name__), "vocab_size": int(tok.vocab_size), "eod": int(tok.eod),
            **ident}


class MMShardWriter(ShardWriter):
    """Writes image-text samples, in the order given, into shards of `shard_size` samples under `out_dir`.

    Use as a context manager: leaving the block normally calls `finish()`; an exception calls `abort()` (removes
    every temporary file and leaves no dataset.json).
    """

    FORMAT, VERSION = FORMAT, VERSION

    def __init__(self, out_dir: str | Path, tokenizer: dict, shard_size: int = 1000, prefix: str = "shard") -> None:
        if not {"kind", "vocab_size", "eod"} <= set(tokenizer):
            raise ValueError(f"MMShardWriter: tokenizer must name kind, vocab_size and eod, got {tokenizer}")
        super().__init__(out_dir, tokenizer, shard_size, prefix)
        self._rows: list[tuple] = []

    def add(self, image: bytes, tokens, *, height: int, width: int, text: str = "", meta: dict | None = None,
            key: str | None = None) -> str:
        """Appends one sample; tokens: int [L] ids (converted to int32). Returns its key (default: %08d index)."""
        ids = checked_ids(tokens, "MMShardWriter.add")
        if height <= 0 or width <= 0:
            raise ValueError(f"MMShardWriter.add: height and width must be positive, got ({height}, {width})")
        key = self._key(key)
        img_off = self._member(f"{key}.{image_ext(image)}", image)
        ids_off = self._member(f"{key}.ids", ids.astype("<i4").tobytes())
        txt = text.encode("utf-8")
        txt_off = self._member(f"{key}.txt", txt)
        info = {"height": int(height), "width": int(width), "num_tokens": int(ids.size), **(meta or {})}
        self._member(f"{key}.json", json.dumps(info, sort_keys=True).encode())
        self._rows.append((key.encode(), img_off, len(image), ids_off, ids.size, txt_off, len(txt), height, width))
        self._added()
        return key

    def _index_tables(self) -> dict[str, np.ndarray]:
        index, self._rows = np.array(self._rows, dtype=INDEX_DTYPE), []
        return {"": index}


class MMShardDataset(ShardReader):
    """Random access to a directory written by MMShardWriter / tools/preprocess_mmdata.py.

    Attributes: `tokenizer` (dict: kind, vocab_size, eod, ...), `info` (the whole dataset.json), and the per-sample
    metadata as numpy arrays over the dataset: `heights`, `widths`, `num_tokens` (int32 [N]) for planning packs
    without reading samples. Reads use os.pread on file descriptors opened per process, so the dataset can be used
    from forked workers and threads.
    """

    FORMAT, VERSION = FORMAT, VERSION

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        cat = np.concatenate(self._index) if self._index else np.zeros(0, INDEX_DTYPE)
        self.heights, self.widths, self.num_tokens = (cat[f].astype(np.int32) for f in ("height", "width",
                                                                                       "num_tokens"))

    def _load_index(self, shard: dict) -> np.ndarray:
        index = np.load(self.path / shard["index"], allow_pickle=False)
        self._check_rows(shard, index, INDEX_DTYPE)
        end = int(max((index["txt_offset"] + index["txt_size"]).max(initial=0),
                      (index["image_offset"] + index["image_size"]).max(initial=0)))
        self._check_tar(shard, len(index), end)
        return index

    def _row(self, i: int) -> tuple[int, np.void]:
        s, r = self._locate(i)
        return s, self._index[s][r]

    def meta(self, i: int) -> tuple[int, int, int]:
        """(image height, image width, number of tokens) of sample i, from the index (no image decode)."""
        _, row = self._row(i)
        return int(row["height"]), int(row["width"]), int(row["num_tokens"])

    def __getitem__(self, i: int) -> ImageTextRecord:
        s, row = self._row(i)
        image = self._read(s, int(row["image_offset"]), int(row["image_size"]))
        ids = self._read(s, int(row["ids_offset"]), 4 * int(row["num_tokens"]))
        tokens = np.frombuffer(ids, dtype="<i4").astype(np.int32)
        return ImageTextRecord(row["key"].decode(), image, tokens)

    def text(self, i: int) -> str:
        """The sample's original text (the `.txt` member)."""
        s, row = self._row(i)
        return self._read(s, int(row["txt_offset"]), int(row["txt_size"])).decode("utf-8")
