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

Writes are atomic: shards and indexes are written under `*.tmp-<pid>` names, renamed when the writer finishes, and
`dataset.json` is written (temp name + rename) last; an existing `dataset.json` is removed before anything else is
written. So a crashed or interrupted run never leaves a directory that `MMShardDataset` accepts.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from omni_mega.data.demo.text import EOD, VOCAB_SIZE

FORMAT, VERSION = "omni_mega.mmshards", 1
DATASET_JSON = "dataset.json"
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


class MMShardWriter:
    """Writes samples, in the order given, into shards of `shard_size` samples under `out_dir`.

    Use as a context manager: leaving the block normally calls `finish()`; an exception calls `abort()` (removes
    every temporary file and leaves no dataset.json).
    """

    def __init__(self, out_dir: str | Path, tokenizer: dict, shard_size: int = 1000, prefix: str = "shard") -> None:
        if shard_size < 1:
            raise ValueError(f"MMShardWriter: shard_size must be >= 1, got {shard_size}")
        if not {"kind", "vocab_size", "eod"} <= set(tokenizer):
            raise ValueError(f"MMShardWriter: tokenizer must name kind, vocab_size and eod, got {tokenizer}")
        self.out_dir, self.tokenizer, self.shard_size, self.prefix = Path(out_dir), tokenizer, shard_size, prefix
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / DATASET_JSON).unlink(missing_ok=True)  # old outputs must never pair with new shards
        self.suffix = f".tmp-{os.getpid()}"
        self.shards: list[dict] = []  # finished shards: names and counts
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._rows: list[tuple] = []
        self.done = False

    def add(self, image: bytes, tokens, *, height: int, width: int, text: str = "", meta: dict | None = None,
            key: str | None = None) -> str:
        """Appends one sample; tokens: int [L] ids (converted to int32). Returns its key (default: %08d index)."""
        ids = np.asarray(tokens)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"MMShardWriter.add: tokens must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if height <= 0 or width <= 0:
            raise ValueError(f"MMShardWriter.add: height and width must be positive, got ({height}, {width})")
        key = f"{self.count:08d}" if key is None else key
        if not key or "." in key or "/" in key or len(key.encode()) > 32:
            raise ValueError(f"MMShardWriter.add: key must be 1-32 bytes without '.' or '/', got {key!r}")
        if self._tar is None:
            self._open_shard()
        img_off = self._member(f"{key}.{image_ext(image)}", image)
        ids_off = self._member(f"{key}.ids", ids.astype("<i4").tobytes())
        txt = text.encode("utf-8")
        txt_off = self._member(f"{key}.txt", txt)
        info = {"height": int(height), "width": int(width), "num_tokens": int(ids.size), **(meta or {})}
        self._member(f"{key}.json", json.dumps(info, sort_keys=True).encode())
        self._rows.append((key.encode(), img_off, len(image), ids_off, ids.size, txt_off, len(txt), height, width))
        self.count += 1
        if len(self._rows) == self.shard_size:
            self._close_shard()
        return key

    def _open_shard(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}"
        self._name = name
        self._tar = tarfile.open(self.out_dir / f"{name}.tar{self.suffix}", "w", format=tarfile.USTAR_FORMAT)

    def _member(self, name: str, data: bytes) -> int:
        """Adds one tar member with fixed metadata (so equal inputs give equal bytes); returns its data offset."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))
        # After addfile the tar offset is the end of the data rounded up to 512-byte blocks.
        return self._tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE

    def _close_shard(self) -> None:
        self._tar.close()
        self._tar = None
        index = np.array(self._rows, dtype=INDEX_DTYPE)
        with open(self.out_dir / f"{self._name}.idx.npy{self.suffix}", "wb") as f:
            np.save(f, index, allow_pickle=False)
        self.shards.append({"tar": f"{self._name}.tar", "index": f"{self._name}.idx.npy", "samples": len(index)})
        self._rows = []

    def finish(self, **report) -> Path:
        """Closes the last shard, renames everything into place and writes dataset.json last. `report` entries
        (e.g. bad_input, stats, source) are stored in dataset.json. Returns the dataset directory."""
        if self._tar is not None:
            self._close_shard()
        for shard in self.shards:
            for name in (shard["tar"], shard["index"]):
                os.replace(self.out_dir / f"{name}{self.suffix}", self.out_dir / name)
        ours = {name for shard in self.shards for name in (shard["tar"], shard["index"])}
        for ext in ("tar", "idx.npy"):  # shards of an earlier, longer run into the same directory
            for path in self.out_dir.glob(f"{self.prefix}-[0-9]*.{ext}"):
                if path.name not in ours:
                    path.unlink()
        info = {"format": FORMAT, "version": VERSION, "samples": self.count, "shards": self.shards,
                "tokenizer": self.tokenizer, **report}
        tmp = self.out_dir / f"{DATASET_JSON}{self.suffix}"
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.out_dir / DATASET_JSON)
        self.done = True
        return self.out_dir

    def abort(self) -> None:
        """Removes this writer's temporary files (finished shards are still under temp names until finish)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        for path in self.out_dir.glob(f"*{self.suffix}"):
            path.unlink(missing_ok=True)
        self.done = True

    def __enter__(self) -> "MMShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.done:
            self.finish()


class MMShardDataset:
    """Random access to a directory written by MMShardWriter / tools/preprocess_mmdata.py.

    Attributes: `tokenizer` (dict: kind, vocab_size, eod, ...), `info` (the whole dataset.json), and the per-sample
    metadata as numpy arrays over the dataset: `heights`, `widths`, `num_tokens` (int32 [N]) for planning packs
    without reading samples. Reads use os.pread on file descriptors opened per process, so the dataset can be used
    from forked workers and threads.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / DATASET_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"MMShardDataset: {meta_path} does not exist: {self.path} is not a complete "
                                    f"dataset (never written, or its writer was interrupted)")
        self.info = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.info.get("format") != FORMAT or self.info.get("version") != VERSION:
            raise ValueError(f"MMShardDataset: {meta_path} has format {self.info.get('format')!r} version "
                             f"{self.info.get('version')!r}, expected {FORMAT!r} version {VERSION}")
        self.tokenizer: dict = self.info["tokenizer"]
        self._tars = [self.path / s["tar"] for s in self.info["shards"]]
        self._index = [self._load_index(s) for s in self.info["shards"]]
        self._starts = np.cumsum([0] + [len(ix) for ix in self._index]).tolist()
        if self._starts[-1] != self.info["samples"]:
            raise ValueError(f"MMShardDataset: shard indexes hold {self._starts[-1]} samples, dataset.json says "
                             f"{self.info['samples']}")
        cat = np.concatenate(self._index) if self._index else np.zeros(0, INDEX_DTYPE)
        self.heights, self.widths, self.num_tokens = (cat[f].astype(np.int32) for f in ("height", "width",
                                                                                       "num_tokens"))
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _load_index(self, shard: dict) -> np.ndarray:
        index = np.load(self.path / shard["index"], allow_pickle=False)
        tar = self.path / shard["tar"]
        if index.dtype != INDEX_DTYPE or len(index) != shard["samples"]:
            raise ValueError(f"MMShardDataset: {shard['index']} has dtype {index.dtype} and {len(index)} rows, "
                             f"expected {INDEX_DTYPE} and {shard['samples']}")
        end = int(max((index["txt_offset"] + index["txt_size"]).max(initial=0),
                      (index["image_offset"] + index["image_size"]).max(initial=0)))
        if not tar.is_file() or tar.stat().st_size < end:
            raise ValueError(f"MMShardDataset: {tar} is missing or truncated (needs >= {end} bytes)")
        return index

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i: int) -> tuple[int, np.void]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"MMShardDataset: index {i} out of range for {n} samples")
        i = i + n if i < 0 else i
        s = bisect.bisect_right(self._starts, i) - 1
        return s, self._index[s][i - self._starts[s]]

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # forked: descriptors are shared with the parent; open our own
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self._tars[shard], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"MMShardDataset: short read from {self._tars[shard]} at {offset} ({len(data)}/{size})")
        return data

    def meta(self, i: int) -> tuple[int, int, int]:
        """(image height, image width, number of tokens) of sample i, from the index (no image decode)."""
        _, row = self._locate(i)
        return int(row["height"]), int(row["width"]), int(row["num_tokens"])

    def __getitem__(self, i: int) -> ImageTextRecord:
        s, row = self._locate(i)
        image = self._read(s, int(row["image_offset"]), int(row["image_size"]))
        ids = self._read(s, int(row["ids_offset"]), 4 * int(row["num_tokens"]))
        tokens = np.frombuffer(ids, dtype="<i4").astype(np.int32)
        return ImageTextRecord(row["key"].decode(), image, tokens)

    def text(self, i: int) -> str:
        """The sample's original text (the `.txt` member)."""
        s, row = self._locate(i)
        return self._read(s, int(row["txt_offset"]), int(row["txt_size"])).decode("utf-8")

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
