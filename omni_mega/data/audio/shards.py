"""Audio-text shards: the image-text shard layout (`omni_mega.data.multimodal.shards`, docs/multimodal_data.md) with
audio in place of the image.

```
dataset.json            format "omni_mega.audioshards", version, shards, samples, tokenizer, bad-input report, stats
shard-00000.tar         per sample: {key}.{wav|flac|ogg|audio} (the encoded bytes as given), {key}.ids (int32 token
                        ids of the transcript, no EOD), {key}.txt (UTF-8 transcript), {key}.json
shard-00000.idx.npy     one record per sample (INDEX_DTYPE): key, data offsets/sizes of the audio, ids and txt
                        members, source sample rate, samples per channel, channels, duration in seconds, token count
```
`AudioShardDataset.meta(i)` sizes a clip (rate, samples, transcript length) from the index without decoding it,
which is what packing needs; `ds[i]` reads its bytes and tokens with two preads. The writer is `MMShardWriter`'s
(same temp names, same atomic finish), with this index.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from omni_mega.data.multimodal import shards as mm

FORMAT, VERSION = "omni_mega.audioshards", 1
INDEX_DTYPE = np.dtype([("key", "S32"), ("audio_offset", "<i8"), ("audio_size", "<i8"), ("ids_offset", "<i8"),
                        ("num_tokens", "<i4"), ("txt_offset", "<i8"), ("txt_size", "<i8"), ("sample_rate", "<i4"),
                        ("num_samples", "<i8"), ("channels", "<i4"), ("duration", "<f8")])


class AudioTextRecord(NamedTuple):
    key: str
    audio: bytes  # encoded bytes as stored (WAV/FLAC/...)
    tokens: np.ndarray  # int32 [L] transcript ids, no EOD


def audio_ext(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    return "audio"


class AudioShardWriter(mm.MMShardWriter):
    """`MMShardWriter` with audio samples: `add(audio, tokens, sample_rate=, num_samples=, channels=, ...)`."""

    def add(self, audio: bytes, tokens, *, sample_rate: int, num_samples: int, channels: int, text: str = "",
            meta: dict | None = None, key: str | None = None) -> str:
        ids = np.asarray(tokens)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"AudioShardWriter.add: tokens must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if sample_rate <= 0 or num_samples <= 0 or channels <= 0:
            raise ValueError(f"AudioShardWriter.add: need positive sample_rate, num_samples and channels, got "
                             f"{sample_rate}, {num_samples}, {channels}")
        key = f"{self.count:08d}" if key is None else key
        if not key or "." in key or "/" in key or len(key.encode()) > 32:
            raise ValueError(f"AudioShardWriter.add: key must be 1-32 bytes without '.' or '/', got {key!r}")
        if self._tar is None:
            self._open_shard()
        audio_off = self._member(f"{key}.{audio_ext(audio)}", audio)
        ids_off = self._member(f"{key}.ids", ids.astype("<i4").tobytes())
        txt = text.encode("utf-8")
        txt_off = self._member(f"{key}.txt", txt)
        duration = num_samples / sample_rate
        info = {"sample_rate": int(sample_rate), "num_samples": int(num_samples), "channels": int(channels),
                "duration": duration, "num_tokens": int(ids.size), **(meta or {})}
        self._member(f"{key}.json", json.dumps(info, sort_keys=True).encode())
        self._rows.append((key.encode(), audio_off, len(audio), ids_off, ids.size, txt_off, len(txt), sample_rate,
                           num_samples, channels, duration))
        self.count += 1
        if len(self._rows) == self.shard_size:
            self._close_shard()
        return key

    def _close_shard(self) -> None:
        self._tar.close()
        self._tar = None
        index = np.array(self._rows, dtype=INDEX_DTYPE)
        with open(self.out_dir / f"{self._name}.idx.npy{self.suffix}", "wb") as f:
            np.save(f, index, allow_pickle=False)
        self.shards.append({"tar": f"{self._name}.tar", "index": f"{self._name}.idx.npy", "samples": len(index)})
        self._rows = []

    def finish(self, **report) -> Path:
        # The image writer's finish with this format's name (later keys of its dataset.json dict win).
        return super().finish(**report, format=FORMAT, version=VERSION)


class AudioShardDataset:
    """Random access to a directory written by `AudioShardWriter` / tools/preprocess_audio.py.

    `tokenizer`, `info`; per-sample index arrays `sample_rates`, `num_samples`, `num_tokens`, `durations`;
    `meta(i)` -> (sample_rate, num_samples, num_tokens); `ds[i]` -> AudioTextRecord; `text(i)`."""

    modality = "audio"  # what the packed sources dispatch on

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / mm.DATASET_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"AudioShardDataset: {meta_path} does not exist: {self.path} is not a complete "
                                    "audio dataset (never written, or its writer was interrupted)")
        self.info = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.info.get("format") != FORMAT or self.info.get("version") != VERSION:
            raise ValueError(f"AudioShardDataset: {meta_path} has format {self.info.get('format')!r} version "
                             f"{self.info.get('version')!r}, expected {FORMAT!r} version {VERSION} (written by "
                             "tools/preprocess_audio.py?)")
        self.tokenizer: dict = self.info["tokenizer"]
        self._tars = [self.path / s["tar"] for s in self.info["shards"]]
        self._index = []
        for s in self.info["shards"]:
            index = np.load(self.path / s["index"], allow_pickle=False)
            if index.dtype != INDEX_DTYPE or len(index) != s["samples"]:
                raise ValueError(f"AudioShardDataset: {s['index']} has dtype {index.dtype} and {len(index)} rows, "
                                 f"expected {INDEX_DTYPE} and {s['samples']}")
            end = int(max((index["txt_offset"] + index["txt_size"]).max(initial=0),
                          (index["audio_offset"] + index["audio_size"]).max(initial=0)))
            tar = self.path / s["tar"]
            if not tar.is_file() or tar.stat().st_size < end:
                raise ValueError(f"AudioShardDataset: {tar} is missing or truncated (needs >= {end} bytes)")
            self._index.append(index)
        self._starts = np.cumsum([0] + [len(ix) for ix in self._index]).tolist()
        cat = np.concatenate(self._index) if self._index else np.zeros(0, INDEX_DTYPE)
        self.sample_rates = cat["sample_rate"].astype(np.int64)
        self.num_samples = cat["num_samples"].astype(np.int64)
        self.num_tokens = cat["num_tokens"].astype(np.int64)
        self.durations = cat["duration"].astype(np.float64)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i: int) -> tuple[int, np.void]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"AudioShardDataset: index {i} out of range for {n} samples")
        i = i + n if i < 0 else i
        s = bisect.bisect_right(self._starts, i) - 1
        return s, self._index[s][i - self._starts[s]]

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # forked: open our own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self._tars[shard], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"AudioShardDataset: short read from {self._tars[shard]} at {offset} ({len(data)}/{size})")
        return data

    def meta(self, i: int) -> tuple[int, int, int]:
        """(source sample rate, samples per channel, transcript tokens) of sample i, from the index."""
        _, row = self._locate(i)
        return int(row["sample_rate"]), int(row["num_samples"]), int(row["num_tokens"])

    def __getitem__(self, i: int) -> AudioTextRecord:
        s, row = self._locate(i)
        audio = self._read(s, int(row["audio_offset"]), int(row["audio_size"]))
        ids = self._read(s, int(row["ids_offset"]), 4 * int(row["num_tokens"]))
        return AudioTextRecord(row["key"].decode(), audio, np.frombuffer(ids, dtype="<i4").astype(np.int32))

    def text(self, i: int) -> str:
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
