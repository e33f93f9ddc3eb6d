"""Hugging Face checkpoint folders: config.json + safetensors (one file, or shards with
`model.safetensors.index.json`), read tensor by tensor and written shard by shard. Pickled weights (`*.bin`, `*.pt`)
are refused, never unpickled."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from omni_mega.interop.errors import InteropError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt", "consolidated.00.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja",
                   "preprocessor_config.json")
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file size (a truncated file is caught here, before
    any tensor is read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InteropError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100 * 2**20:
            raise InteropError(f"{path}: truncated or not a safetensors file (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise InteropError(f"{path}: corrupt safetensors header ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise InteropError(f"{path}: truncated: its header describes {8 + n + end} bytes, the file has {size}")
    return header


class HFCheckpoint:
    """config.json and the tensors of a Hugging Face model folder. `get(name)` reads one tensor (memory-mapped,
    one shard open at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)
        if not self.dir.is_dir():
            raise InteropError(f"{self.dir}: no such directory")
        cfg = self.dir / "config.json"
        if not cfg.is_file():
            raise InteropError(f"{self.dir}: no config.json (a Hugging Face model folder has config.json and "
                               "*.safetensors)")
        try:
            self.config = json.loads(cfg.read_text())
        except ValueError as e:
            raise InteropError(f"{cfg}: not valid JSON ({e})") from None
        self.shards = self._shards()
        self.headers = {s: read_header(self.dir / s) for s in sorted(set(self.shards.values()))}
        for name, shard in self.shards.items():
            if name not in self.headers[shard]:
                raise InteropError(f"{self.dir / INDEX}: maps {name!r} to {shard}, which does not hold it")
        self._open: tuple[str, object] | None = None

    def _shards(self) -> dict[str, str]:
        index, single = self.dir / INDEX, self.dir / SINGLE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise InteropError(f"{index}: not a safetensors index ({e})") from None
            missing = sorted({s for s in weight_map.values() if not (self.dir / s).is_file()})
            if missing:
                raise InteropError(f"{index}: shard file(s) missing: {', '.join(missing)}")
            return dict(weight_map)
        if single.is_file():
            return {k: SINGLE for k in read_header(single) if k != "__metadata__"}
        loose = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if len(loose) == 1:
            return {k: loose[0] for k in read_header(self.dir / loose[0]) if k != "__metadata__"}
        pickled = [n for n in PICKLED if (self.dir / n).exists()] + sorted(p.name for p in self.dir.glob("*.bin"))
        if pickled:
            raise InteropError(f"{self.dir}: only pickled weights ({pickled[0]}); they are never unpickled here: convert "
                               "them to safetensors first (e.g. load with transformers and save_pretrained("
                               "safe_serialization=True))")
        raise InteropError(f"{self.dir}: no {SINGLE} or {INDEX}")

    def names(self) -> list[str]:
        return list(self.shards)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.headers[self.shards[name]][name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        code = self.headers[self.shards[name]][name]["dtype"]
        if code not in _DTYPES:
            raise InteropError(f"{name}: unsupported safetensors dtype {code}")
        return _DTYPES[code]

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        shard = self.shards[name]
        held = self._open  # read once, so a concurrent call cannot swap the handle between check and use
        if held is None or held[0] != shard:
            held = self._open = (shard, safe_open(str(self.dir / shard), framework="pt"))
        try:
            return held[1].get_tensor(name)
        except Exception as e:  # a corrupt shard: one line naming the tensor and the file
            raise InteropError(f"{self.dir / shard}: cannot read {name!r} ({e})") from None

    def close(self) -> None:
        self._open = None

    def tokenizer_files(self) -> list[str]:
        return [n for n in TOKENIZER_FILES if (self.dir / n).is_file()]


_CODES = {v: k for k, v in _DTYPES.items()}


class ShardWriter:
    """Writes a planned sequence of tensors into `model-0000i-of-0000n.safetensors` files of at most
    `max_shard_bytes` each, plus the index, streaming: the plan (name, dtype, shape in write order) fixes every
    shard's header up front, so each tensor goes to disk as it is produced and nothing is buffered.

    Usage: `w = ShardWriter(out, plan, max_shard_bytes); for name, t in ...: w.add(name, t); w.close()` with the
    tensors added in plan order."""

    def __init__(self, out: str | Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 max_shard_bytes: int = 2 * 2**30) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
        size = 0
        for name, dtype, shape in plan:
            n = _nbytes(dtype, shape)
            if self.shards[-1] and size + n > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, dtype, shape))
            size += n
        k = len(self.shards)
        self.names = [SINGLE if k == 1 else f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i in range(k)]
        self.order = [name for shard in self.shards for name, _, _ in shard]
        self.where = {name: (i, dtype, tuple(shape)) for i, shard in enumerate(self.shards)
                      for name, dtype, shape in shard}
        self.total = sum(_nbytes(d, s) for _, d, s in plan)
        self._next, self._shard, self._file = 0, -1, None

    def add(self, name: str, t: torch.Tensor) -> None:
        if self._next >= len(self.order) or self.order[self._next] != name:
            want = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise ValueError(f"ShardWriter: got {name!r}, the plan expects {want!r}")
        shard, dtype, shape = self.where[name]
        while self._shard < shard:
            self._open_next()
        t = t.detach().to("cpu").contiguous()
        if t.dtype != dtype or tuple(t.shape) != tuple(shape):
            raise ValueError(f"ShardWriter: {name} is {t.dtype} {tuple(t.shape)}, planned {dtype} {tuple(shape)}")
        if t.numel():
            self._file.write(t.reshape(-1).view(torch.uint8).numpy().data)
        self._next += 1

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        self._shard += 1
        header, offset = {}, 0
        for name, dtype, shape in self.shards[self._shard]:
            n = _nbytes(dtype, shape)
            header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
        self._file = open(self.out / (self.names[self._shard] + ".tmp"), "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)

    def close(self) -> list[str]:
        if self._next != len(self.order):
            raise ValueError(f"ShardWriter: {len(self.order) - self._next} planned tensors were not written")
        if self._file is not None:
            self._file.close()
        for name in self.names:
            os.replace(self.out / (name + ".tmp"), self.out / name)
        if len(self.names) > 1:
            weight_map = {n: self.names[i] for i, shard in enumerate(self.shards) for n, _, _ in shard}
            (self.out / INDEX).write_text(json.dumps({"metadata": {"total_size": self.total},
                                                      "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        return list(self.names)


def _nbytes(dtype: torch.dtype, shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * dtype.itemsize
