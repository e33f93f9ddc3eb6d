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
        if self._open is None or self._open[0] != shard:
            self._open = (shard, safe_open(str(self.dir / shard), framework="pt"))
        try:
            return self._open[1].get_tensor(name)
        except Exception as e:  # a corrupt shard: one line naming the tensor and the file
            raise InteropError(f"{self.dir / shard}: cannot read {name!r} ({e})") from None

    def close(self) -> None:
        self._open = None

    def tokenizer_files(self) -> list[str]:
        return [n for n in TOKENIZER_FILES if (self.dir / n).is_file()]


class ShardWriter:
    """Writes tensors into `model-0000i-of-0000n.safetensors` files of at most `max_shard_bytes` each, then the
    index. Tensors are buffered only up to one shard."""

    def __init__(self, out: str | Path, max_shard_bytes: int = 2 * 2**30) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.max = max_shard_bytes
        self.buf: dict[str, torch.Tensor] = {}
        self.bytes = 0
        self.files: list[list[str]] = []
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.buf and self.bytes + n > self.max:
            self._flush()
        self.buf[name] = t.contiguous()
        self.bytes += n
        self.total += n

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buf:
            return
        i = len(self.files)
        save_file(self.buf, str(self.out / f"shard-{i:05d}.tmp"), metadata={"format": "pt"})
        self.files.append(list(self.buf))
        self.buf, self.bytes = {}, 0

    def close(self) -> list[str]:
        self._flush()
        n = len(self.files)
        names = []
        for i, keys in enumerate(self.files):
            name = SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out / f"shard-{i:05d}.tmp", self.out / name)
            names.append(name)
        if n > 1:
            weight_map = {k: names[i] for i, keys in enumerate(self.files) for k in keys}
            (self.out / INDEX).write_text(json.dumps({"metadata": {"total_size": self.total},
                                                      "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        return names
