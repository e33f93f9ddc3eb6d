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

import bisect
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omni_mega.data.multimodal.shards import image_ext

FORMAT, VERSION = "omni_mega.convshards", 1
DATASET_JSON = "dataset.json"
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


class ConvShardWriter:
    """Writes samples in the order given into shards of `shard_size` samples under `out_dir` (a context manager:
    an exception removes every temporary file and leaves no dataset.json)."""

    def __init__(self, out_dir: str | Path, kind: str, tokenizer: dict, shard_size: int = 1000) -> None:
        if kind not in KINDS:
            raise ValueError(f"ConvShardWriter: kind must be one of {KINDS}, got {kind!r}")
        if shard_size < 1:
            raise ValueError(f"ConvShardWriter: shard_size must be >= 1, got {shard_size}")
        self.out_dir, self.kind, self.tokenizer, self.shard_size = Path(out_dir), kind, tokenizer, shard_size
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / DATASET_JSON).unlink(missing_ok=True)  # old outputs must never pair with new shards
        self.suffix = f".tmp-{os.getpid()}"
        self.shards: list[dict] = []
        self.count, self.done = 0, False
        self._tar: tarfile.TarFile | None = None
        self._rows: dict[str, list] = {"samples": [], "sequences": [], "images": []}

    def add(self, sequences: list[Sequence], images: list[tuple[bytes, int, int]], meta: dict | None = None) -> str:
        """Appends one sample: its sequences and its images as (bytes, height, width). Returns its key."""
        marks = [int((np.asarray(s.ids) == IMAGE_MARK).sum()) for s in sequences]
        if not sequences or any(m != len(images) for m in marks):
            raise ValueError(f"ConvShardWriter.add: every sequence must mark each of the {len(images)} images once, "
                             f"got marks {marks}")
        key = f"{self.count:08d}"
        if self._tar is None:
            self._tar = tarfile.open(self.out_dir / f"shard-{len(self.shards):05d}.tar{self.suffix}", "w",
                                     format=tarfile.USTAR_FORMAT)
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
        self.count += 1
        if len(self._rows["samples"]) == self.shard_size:
            self._close_shard()
        return key

    def _member(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: equal inputs, equal bytes
        self._tar.addfile(info, io.BytesIO(data))
        return self._tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE

    def _close_shard(self) -> None:
        self._tar.close()
        self._tar = None
        name = f"shard-{len(self.shards):05d}"
        tables = {"samples": np.array(self._rows["samples"], dtype=SAMPLE_DTYPE),
                  "sequences": np.array(self._rows["sequences"], dtype=SEQ_DTYPE),
                  "images": np.array(self._rows["images"], dtype=IMG_DTYPE)}
        with open(self.out_dir / f"{name}.idx.npz{self.suffix}", "wb") as f:
            np.savez(f, **tables)
        self.shards.append({"tar": f"{name}.tar", "index": f"{name}.idx.npz", "samples": len(tables["samples"])})
        self._rows = {"samples": [], "sequences": [], "images": []}

    def finish(self, **report) -> Path:
        if self._tar is not None:
            self._close_shard()
        for shard in self.shards:
            for name in (shard["tar"], shard["index"]):
                os.replace(self.out_dir / f"{name}{self.suffix}", self.out_dir / name)
        ours = {name for s in self.shards for name in (s["tar"], s["index"])}
        for path in list(self.out_dir.glob("shard-[0-9]*.tar")) + list(self.out_dir.glob("shard-[0-9]*.idx.npz")):
            if path.name not in ours:  # shards of an earlier, longer run into the same directory
                path.unlink()
        info = {"format": FORMAT, "version": VERSION, "kind": self.kind, "samples": self.count,
                "shards": self.shards, "tokenizer": self.tokenizer, **report}
        tmp = self.out_dir / f"{DATASET_JSON}{self.suffix}"
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.out_dir / DATASET_JSON)
        self.done = True
        return self.out_dir

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        for path in self.out_dir.glob(f"*{self.suffix}"):
            path.unlink(missing_ok=True)
        self.done = True

    def __enter__(self) -> "ConvShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.done:
            self.finish()


class ConvShardDataset:
    """Random access to a directory written by ConvShardWriter (`tools/preprocess_conversations.py`).

    `kind`, `tokenizer` and `info` (dataset.json); `meta(i)` -> (sequence lengths, [(height, width)] per image)
    from the index; `ds[i]` -> ConvSample. File descriptors are opened per process (safe in forked workers and
    threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / DATASET_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"ConvShardDataset: {meta_path} does not exist: {self.path} is not a complete "
                                    "conversation dataset (never written, or its writer was interrupted)")
        self.info = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.info.get("format") != FORMAT or self.info.get("version") != VERSION:
            raise ValueError(f"ConvShardDataset: {meta_path} has format {self.info.get('format')!r} version "
                             f"{self.info.get('version')!r}, expected {FORMAT!r} version {VERSION}")
        self.kind, self.tokenizer = self.info["kind"], self.info["tokenizer"]
        self._tars = [self.path / s["tar"] for s in self.info["shards"]]
        self._tables = [self._load_index(s) for s in self.info["shards"]]
        self._starts = np.cumsum([0] + [len(t["samples"]) for t in self._tables]).tolist()
        if self._starts[-1] != self.info["samples"]:
            raise ValueError(f"ConvShardDataset: shard indexes hold {self._starts[-1]} samples, dataset.json says "
                             f"{self.info['samples']}")
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _load_index(self, shard: dict) -> dict[str, np.ndarray]:
        with np.load(self.path / shard["index"], allow_pickle=False) as z:
            tables = {k: z[k] for k in ("samples", "sequences", "images")}
        for k, dt in (("samples", SAMPLE_DTYPE), ("sequences", SEQ_DTYPE), ("images", IMG_DTYPE)):
            if tables[k].dtype != dt:
                raise ValueError(f"ConvShardDataset: {shard['index']}[{k}] has dtype {tables[k].dtype}, expected {dt}")
        if len(tables["samples"]) != shard["samples"]:
            raise ValueError(f"ConvShardDataset: {shard['index']} holds {len(tables['samples'])} samples, "
                             f"dataset.json says {shard['samples']}")
        s, q, m = tables["samples"], tables["sequences"], tables["images"]
        end = max(int((s["json_offset"] + s["json_size"]).max(initial=0)), int((m["offset"] + m["size"]).max(initial=0)),
                  int((q["mask_offset"] + q["length"]).max(initial=0)))
        tar = self.path / shard["tar"]
        if not tar.is_file() or tar.stat().st_size < end:
            raise ValueError(f"ConvShardDataset: {tar} is missing or truncated (needs >= {end} bytes)")
        return tables

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def has_images(self) -> bool:
        return any(len(t["images"]) for t in self._tables)

    @property
    def sequences_per_sample(self) -> int:
        """2 for preference pairs (chosen, rejected), else 1."""
        return 2 if self.kind == "preference" else 1

    def _locate(self, i: int) -> tuple[int, np.void]:
        if not 0 <= i < len(self):
            raise IndexError(f"ConvShardDataset: index {i} out of range for {len(self)} samples")
        s = bisect.bisect_right(self._starts, i) - 1
        return s, self._tables[s]["samples"][i - self._starts[s]]

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # forked: descriptors are shared with the parent; open our own
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self._tars[shard], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"ConvShardDataset: short read from {self._tars[shard]} at {offset} ({len(data)}/{size})")
        return data

    def meta(self, i: int) -> tuple[list[int], list[tuple[int, int]]]:
        """(token count of each sequence, (height, width) of each image), from the index."""
        s, row = self._locate(i)
        t = self._tables[s]
        seqs = t["sequences"][int(row["seq_first"]):int(row["seq_first"]) + int(row["seq_count"])]
        imgs = t["images"][int(row["img_first"]):int(row["img_first"]) + int(row["img_count"])]
        return [int(x) for x in seqs["length"]], [(int(h), int(w)) for h, w in zip(imgs["height"], imgs["width"])]

    def __getitem__(self, i: int) -> ConvSample:
        s, row = self._locate(i)
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
