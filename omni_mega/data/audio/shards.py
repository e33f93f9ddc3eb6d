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
which is what packing needs; `ds[i]` reads its bytes and tokens with two preads. The write discipline is
`data.shard_io`'s (temp names, atomic finish), with this index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from omni_mega.data.multimodal import shards as mm
from omni_mega.data.shard_io import ShardReader, checked_ids

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

    FORMAT, VERSION = FORMAT, VERSION

    def add(self, audio: bytes, tokens, *, sample_rate: int, num_samples: int, channels: int, text: str = "",
            meta: dict | None = None, key: str | None = None) -> str:
        ids = checked_ids(tokens, "AudioShardWriter.add")
        if sample_rate <= 0 or num_samples <= 0 or channels <= 0:
            raise ValueError(f"AudioShardWriter.add: need positive sample_rate, num_samples and channels, got "
                             f"{sample_rate}, {num_samples}, {channels}")
        key = self._key(key)
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
        self._added()
        return key

    def _index_tables(self) -> dict[str, np.ndarray]:
        index, self._rows = np.array(self._rows, dtype=INDEX_DTYPE), []
        return {"": index}


class AudioShardDataset(ShardReader):
    """Random access to a directory written by `AudioShardWriter` / tools/preprocess_audio.py.

    `tokenizer`, `info`; per-sample index arrays `sample_rates`, `num_samples`, `num_tokens`, `durations`;
    `meta(i)` -> (sample_rate, num_samples, num_tokens); `ds[i]` -> AudioTextRecord; `text(i)`."""

    FORMAT, VERSION = FORMAT, VERSION
    WHAT = "audio dataset"
    HINT = " (written by tools/preprocess_audio.py?)"
    modality = "audio"  # what the packed sources dispatch on

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        cat = np.concatenate(self._index) if self._index else np.zeros(0, INDEX_DTYPE)
        self.sample_rates = cat["sample_rate"].astype(np.int64)
        self.num_samples = cat["num_samples"].astype(np.int64)
        self.num_tokens = cat["num_tokens"].astype(np.int64)
        self.durations = cat["duration"].astype(np.float64)

    def _load_index(self, shard: dict) -> np.ndarray:
        index = np.load(self.path / shard["index"], allow_pickle=False)
        self._check_rows(shard, index, INDEX_DTYPE)
        end = int(max((index["txt_offset"] + index["txt_size"]).max(initial=0),
                      (index["audio_offset"] + index["audio_size"]).max(initial=0)))
        self._check_tar(shard, len(index), end)
        return index

    def _row(self, i: int) -> tuple[int, np.void]:
        s, r = self._locate(i)
        return s, self._index[s][r]

    def meta(self, i: int) -> tuple[int, int, int]:
        """(source sample rate, samples per channel, transcript tokens) of sample i, from the index."""
        _, row = self._row(i)
        return int(row["sample_rate"]), int(row["num_samples"]), int(row["num_tokens"])

    def __getitem__(self, i: int) -> AudioTextRecord:
        s, row = self._row(i)
        audio = self._read(s, int(row["audio_offset"]), int(row["audio_size"]))
        ids = self._read(s, int(row["ids_offset"]), 4 * int(row["num_tokens"]))
        return AudioTextRecord(row["key"].decode(), audio, np.frombuffer(ids, dtype="<i4").astype(np.int32))

    def text(self, i: int) -> str:
        s, row = self._row(i)
        return self._read(s, int(row["txt_offset"]), int(row["txt_size"])).decode("utf-8")
