"""What every shard format here shares (image-text, audio-text, conversations): tar files whose members carry fixed
metadata (equal inputs give equal bytes), a numpy index per shard, a `dataset.json` that names the format, and the
write discipline: shards and indexes under `*.tmp-<pid>` names, renamed when the writer finishes, `dataset.json`
written last (and removed first), so an interrupted run never leaves a directory a reader accepts. Readers seek with
the index (one `os.pread` per member) on descriptors opened per process, so forked workers and threads can share a
dataset object.

A format subclasses `ShardWriter` (its `add`, `_index_tables`) and `ShardReader` (its `_load_index`, `__getitem__`).
"""

from __future__ import annotations

import bisect
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

DATASET_JSON = "dataset.json"


def checked_ids(tokens, who: str) -> np.ndarray:
    """Token ids as given, refused unless 1-D integers."""
    ids = np.asarray(tokens)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{who}: tokens must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids


class ShardWriter:
    """Writes samples, in the order given, into shards of `shard_size` samples under `out_dir`. A context manager:
    leaving the block normally calls `finish()`; an exception calls `abort()` (every temporary file removed, no
    dataset.json)."""

    FORMAT, VERSION = "", 0
    INDEX_EXT = "idx.npy"

    def __init__(self, out_dir: str | Path, tokenizer: dict, shard_size: int = 1000, prefix: str = "shard") -> None:
        if shard_size < 1:
            raise ValueError(f"{type(self).__name__}: shard_size must be >= 1, got {shard_size}")
        self.out_dir, self.tokenizer, self.shard_size, self.prefix = Path(out_dir), tokenizer, shard_size, prefix
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / DATASET_JSON).unlink(missing_ok=True)  # old outputs must never pair with new shards
        self.suffix = f".tmp-{os.getpid()}"
        self.shards: list[dict] = []  # finished shards: names and counts
        self.count = 0
        self.done = False
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    # ---- for the formats' add() -------------------------------------------------------------------------------
    def _key(self, key: str | None) -> str:
        key = f"{self.count:08d}" if key is None else key
        if not key or "." in key or "/" in key or len(key.encode()) > 32:
            raise ValueError(f"{type(self).__name__}.add: key must be 1-32 bytes without '.' or '/', got {key!r}")
        if self._tar is None:
            self._name = f"{self.prefix}-{len(self.shards):05d}"
            self._tar = tarfile.open(self.out_dir / f"{self._name}.tar{self.suffix}", "w",
                                     format=tarfile.USTAR_FORMAT)
        return key

    def _member(self, name: str, data: bytes) -> int:
        """Adds one tar member with fixed metadata (so equal inputs give equal bytes); returns its data offset."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))
        # After addfile the tar offset is the end of the data rounded up to 512-byte blocks.
        return self._tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE

    def _added(self) -> None:
        """One sample is complete: count it, and close the shard when it is full."""
        self.count += 1
        self._in_shard += 1
        if self._in_shard == self.shard_size:
            self._close_shard()

    def _index_tables(self) -> dict[str, np.ndarray]:
        """The shard's index ({"": one table} is saved as .npy, several as .npz) and reset the rows."""
        raise NotImplementedError

    def _header(self) -> dict:
        """Format-specific entries of dataset.json."""
        return {}

    # ---- shards and the atomic finish ----------------------------------------------------------------------------
    def _close_shard(self) -> None:
        self._tar.close()
        self._tar = None
        tables = self._index_tables()
        index = f"{self._name}.{self.INDEX_EXT}"
        with open(self.out_dir / f"{index}{self.suffix}", "wb") as f:
            if list(tables) == [""]:
                np.save(f, tables[""], allow_pickle=False)
            else:
                np.savez(f, **tables)
        self.shards.append({"tar": f"{self._name}.tar", "index": index, "samples": self._in_shard})
        self._in_shard = 0

    def finish(self, **report) -> Path:
        """Closes the last shard, renames everything into place and writes dataset.json last. `report` entries
        (e.g. bad_input, stats, source) are stored in dataset.json. Returns the dataset directory."""
        if self._tar is not None:
            self._close_shard()
        for shard in self.shards:
            for name in (shard["tar"], shard["index"]):
                os.replace(self.out_dir / f"{name}{self.suffix}", self.out_dir / name)
        ours = {name for shard in self.shards for name in (shard["tar"], shard["index"])}
        for ext in ("tar", self.INDEX_EXT):  # shards of an earlier, longer run into the same directory
            for path in self.out_dir.glob(f"{self.prefix}-[0-9]*.{ext}"):
                if path.name not in ours:
                    path.unlink()
        info = {"format": self.FORMAT, "version": self.VERSION, "samples": self.count, "shards": self.shards,
                "tokenizer": self.tokenizer, **self._header(), **report}
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

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.done:
            self.finish()


class ShardReader:
    """Random access to a directory a `ShardWriter` finished: `info` (the whole dataset.json), `tokenizer`,
    `len()`, and for the formats `_locate(i)` -> (shard, row in that shard) and `_read(shard, offset, size)`."""

    FORMAT, VERSION = "", 0
    WHAT = "dataset"  # in the error for a directory without dataset.json
    HINT = ""  # appended to the error for a dataset of another format

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        name = type(self).__name__
        meta_path = self.path / DATASET_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"{name}: {meta_path} does not exist: {self.path} is not a complete {self.WHAT} "
                                    "(never written, or its writer was interrupted)")
        self.info = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.info.get("format") != self.FORMAT or self.info.get("version") != self.VERSION:
            raise ValueError(f"{name}: {meta_path} has format {self.info.get('format')!r} version "
                             f"{self.info.get('version')!r}, expected {self.FORMAT!r} version {self.VERSION}"
                             + self.HINT)
        self.tokenizer: dict = self.info["tokenizer"]
        self._tars = [self.path / s["tar"] for s in self.info["shards"]]
        self._index = [self._load_index(s) for s in self.info["shards"]]
        self._starts = np.cumsum([0] + [s["samples"] for s in self.info["shards"]]).tolist()
        if self._starts[-1] != self.info["samples"]:
            raise ValueError(f"{name}: shard indexes hold {self._starts[-1]} samples, dataset.json says "
                             f"{self.info['samples']}")
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _load_index(self, shard: dict):
        """The shard's index, checked against dataset.json and the tar's size (`_check_tar`)."""
        raise NotImplementedError

    def _check_rows(self, shard: dict, table: np.ndarray, dtype: np.dtype, what: str = "") -> None:
        if table.dtype != dtype:
            raise ValueError(f"{type(self).__name__}: {shard['index']}{what} has dtype {table.dtype}, expected {dtype}")

    def _check_tar(self, shard: dict, rows: int, end: int) -> None:
        """`rows` samples in the index as dataset.json says, and a tar long enough for the index's last member."""
        if rows != shard["samples"]:
            raise ValueError(f"{type(self).__name__}: {shard['index']} holds {rows} samples, dataset.json says "
                             f"{shard['samples']}")
        tar = self.path / shard["tar"]
        if not tar.is_file() or tar.stat().st_size < end:
            raise ValueError(f"{type(self).__name__}: {tar} is missing or truncated (needs >= {end} bytes)")

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{type(self).__name__}: index {i} out of range for {n} samples")
        i = i + n if i < 0 else i
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - self._starts[s]

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # forked: descriptors are shared with the parent; open our own
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self._tars[shard], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{type(self).__name__}: short read from {self._tars[shard]} at {offset} "
                          f"({len(data)}/{size})")
        return data

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
