"""Megatron dist checkpoints (the `torch_dist` backend) written and read one global tensor at a time, without
building a model.

megatron-core's `dist_checkpointing` stores every model tensor in torch.distributed.checkpoint (DCP) format under its
*global* shape (the TP shards laid side by side, SwiGLU's fc1 as [all gate rows; all up rows]) next to two small files
of its own (`metadata.json`, `common.pt`). A checkpoint written here with one chunk per tensor loads through
`dist_checkpointing.load` at any TP/PP layout (DCP reads each rank's overlap of the stored chunk), and any checkpoint
megatron wrote at any layout can be read back here tensor by tensor (DCP assembles the chunks).

Memory: the writer plans with meta tensors and produces each tensor only when DCP writes it (`LazySavePlanner`), one
file per tensor, so a conversion holds about one tensor (plus its sources) at a time; the reader fills one
preallocated tensor per call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import WriteItemType

# What megatron's dist_checkpointing writes next to the DCP files (serialization.save).
MEGATRON_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                     "common_backend_version": 1}


class LazySavePlanner(DefaultSavePlanner):
    """Plans over meta tensors; `resolve_data` calls the tensor's producer when DCP writes it."""

    def __init__(self, producers: dict[str, Callable[[], torch.Tensor]]) -> None:
        super().__init__()
        self.producers = producers

    def resolve_data(self, write_item):
        if write_item.type == WriteItemType.BYTE_IO:
            return super().resolve_data(write_item)
        key = write_item.index.fqn
        t = self.producers[key]()
        want = tuple(write_item.tensor_data.size)
        if tuple(t.shape) != want:
            raise ValueError(f"{key}: produced shape {tuple(t.shape)}, planned {want}")
        return t.detach().to("cpu").contiguous()


def write_tensors(ckpt_dir: str | Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype, Callable]]) -> None:
    """Writes a megatron dist checkpoint holding `specs`: key -> (global shape, dtype, producer()), producers called
    one at a time while writing. The directory is created; it must not hold another checkpoint."""
    from torch.distributed.checkpoint import FileSystemWriter

    out = Path(ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype, _) in specs.items()}

    def checked(key, shape, dtype, fn):
        def produce():
            t = fn()
            if t.dtype != dtype:
                t = t.to(dtype)
            return t
        return produce

    producers = {k: checked(k, *v) for k, v in specs.items()}
    # One file per tensor: DCP keeps every tensor of a file referenced until the file is closed.
    writer = FileSystemWriter(str(out), single_file_per_rank=False, sync_files=False, thread_count=1)
    dcp.save(meta, storage_writer=writer, planner=LazySavePlanner(producers), no_dist=True)
    torch.save({}, out / "common.pt")
    (out / "metadata.json").write_text(json.dumps(MEGATRON_METADATA))


def tensor_metadata(ckpt_dir: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (global shape, dtype) of every tensor in a dist checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(ckpt_dir)).read_metadata()
    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


class TensorReader:
    """Reads global tensors of a dist checkpoint by key (whatever TP/PP layout wrote them)."""

    def __init__(self, ckpt_dir: str | Path) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        self.dir = str(ckpt_dir)
        self.meta = tensor_metadata(ckpt_dir)
        self._reader = FileSystemReader

    def __contains__(self, key: str) -> bool:
        return key in self.meta

    def read(self, key: str) -> torch.Tensor:
        shape, dtype = self.meta[key]
        return self.read_many([key])[key]

    def read_many(self, keys: list[str]) -> dict[str, torch.Tensor]:
        missing = [k for k in keys if k not in self.meta]
        if missing:
            raise KeyError(f"{self.dir}: no tensor {missing[0]!r} in the checkpoint")
        sd = {k: torch.empty(self.meta[k][0], dtype=self.meta[k][1]) for k in keys}
        dcp.load(sd, storage_reader=self._reader(self.dir), no_dist=True)
        return sd
