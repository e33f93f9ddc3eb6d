"""Megatron dist checkpoints (the `torch_dist` backend) written and read one global tensor at a time, without
building a model.

megatron-core's `dist_checkpointing` stores every model tensor in torch.distributed.checkpoint (DCP) format under its
*global* shape (the TP shards laid side by side, SwiGLU's fc1 as [all gate rows; all up rows]) next to two small files
of its own (`metadata.json`, `common.pt`). A checkpoint written here with one chunk per tensor (fc1 as its two
row blocks [gate; up], the chunks megatron itself writes at TP > 1, so no concatenated copy is made) loads through
`dist_checkpointing.load` at any TP/PP layout (DCP reads each rank's overlap of the stored chunk), and any checkpoint
megatron wrote at any layout can be read back here tensor by tensor (DCP assembles the chunks).

Memory: the writer plans with meta tensors and produces each tensor only when DCP writes it (`LazySavePlanner`), one
file per tensor (or row block), so a conversion holds about one tensor (plus its sources) at a time; the reader
loads one tensor per call.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.planner import SavePlan, WriteItemType
from torch.utils.serialization import config as serialization_config

from omni_mega.runtime.manifest import new_hash

# DCP writes each tensor with torch.save, a zip archive whose CRC32 nobody reads back (torch.load does not check it);
# the checkpoint's manifest (XXH3 of every file) is what catches corruption.
CRC32 = False

# What megatron's dist_checkpointing writes next to the DCP files (serialization.save).
MEGATRON_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                     "common_backend_version": 1}


class LazySavePlanner(DefaultSavePlanner):
    """Plans over meta tensors; `resolve_data` calls the tensor's (or row block's) producer when DCP writes it.
    `producers`: key -> producer, or key -> [(first row, rows, producer), ...] for a tensor stored as row blocks."""

    def __init__(self, producers: dict[str, Callable | list[tuple[int, int, Callable]]]) -> None:
        super().__init__()
        self.producers = producers

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        items = []
        for item in plan.items:
            blocks = self.producers.get(item.index.fqn)
            if not isinstance(blocks, list):
                items.append(item)
                continue
            size = item.tensor_data.size
            for row, rows, _ in blocks:  # one SHARD item per block: a chunk [row, row + rows) of the global tensor
                offsets = torch.Size([row] + [0] * (len(size) - 1))
                chunk = ChunkStorageMetadata(offsets=offsets, sizes=torch.Size([rows, *size[1:]]))
                items.append(dataclasses.replace(item, index=MetadataIndex(item.index.fqn, offsets),
                                                 type=WriteItemType.SHARD,
                                                 tensor_data=dataclasses.replace(item.tensor_data, chunk=chunk)))
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def resolve_data(self, write_item):
        if write_item.type == WriteItemType.BYTE_IO:
            return super().resolve_data(write_item)
        key = write_item.index.fqn
        fn = self.producers[key]
        if isinstance(fn, list):
            fn = next(f for row, _, f in fn if row == write_item.index.offset[0])
        t = fn()
        want = tuple(write_item.tensor_data.chunk.sizes)
        if tuple(t.shape) != want:
            raise ValueError(f"{key}: produced shape {tuple(t.shape)}, planned {want}")
        return t.detach().to("cpu").contiguous()


Producer = Callable[[], torch.Tensor]


class _HashingStream(io.RawIOBase):
    """A file being written, hashed as its bytes pass (the manifest's XXH3, without reading the file back)."""

    def __init__(self, raw) -> None:
        super().__init__()
        self.raw, self.size = raw, 0
        self.hash = new_hash()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = self.raw.write(b)
        view = memoryview(b).cast("B")
        self.hash.update(view if n == len(view) else view[:n])
        self.size += n
        return n

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        super().close()  # flushes
        self.raw.close()


def _hashing_filesystem(digests: dict[str, tuple[int, str]]):
    """DCP's local FileSystem whose written files record (size, checksum) in `digests` by absolute path."""
    from torch.distributed.checkpoint.filesystem import FileSystem

    class HashingFileSystem(FileSystem):
        @contextmanager
        def create_stream(self, path, mode):
            with super().create_stream(path, mode) as stream:
                if "w" not in mode:
                    yield stream
                    return
                hashed = _HashingStream(stream)
                yield hashed
                digests[os.path.abspath(path)] = (hashed.size, hashed.hash.hexdigest())

    return HashingFileSystem()


def write_tensors(ckpt_dir: str | Path,
                  specs: dict[str, tuple[tuple[int, ...], torch.dtype, Producer | list[tuple[int, int, Producer]]]]
                  ) -> dict[str, tuple[int, str]]:
    """Writes a megatron dist checkpoint holding `specs`: key -> (global shape, dtype, producer()), producers called
    one at a time while writing. A producer may instead be a list of (first row, rows, producer)
    blocks covering dim 0: the tensor is stored as those chunks, never concatenated. The directory is created; it
    must not hold another checkpoint. Returns the DCP files' (size, checksum) by absolute path, hashed while written,
    for the manifest (`runtime.manifest.write_manifest(step, known)`)."""
    from torch.distributed.checkpoint import FileSystemWriter

    out = Path(ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype, _) in specs.items()}

    def cast(fn, dtype):
        def produce():
            t = fn()
            return t if t.dtype == dtype else t.to(dtype)
        return produce

    producers = {k: [(row, rows, cast(f, dtype)) for row, rows, f in fn] if isinstance(fn, list) else cast(fn, dtype)
                 for k, (_, dtype, fn) in specs.items()}
    # One file per tensor: DCP keeps every tensor of a file referenced until the file is closed. One writer thread: a
    # second one (producing while the other writes) cost about 25% more CPU for no shorter wall time on the 2-core dev VM.
    writer = FileSystemWriter(str(out), single_file_per_rank=False, sync_files=False, thread_count=1)
    digests: dict[str, tuple[int, str]] = {}
    writer.fs = _hashing_filesystem(digests)
    with serialization_config.patch({"save.compute_crc32": CRC32}):
        dcp.save(meta, storage_writer=writer, planner=LazySavePlanner(producers), no_dist=True)
    torch.save({}, out / "common.pt")
    (out / "metadata.json").write_text(json.dumps(MEGATRON_METADATA))
    return digests


def tensor_metadata(ckpt_dir: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (global shape, dtype) of every tensor in a dist checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader

    return _shapes(FileSystemReader(str(ckpt_dir)).read_metadata())


def _shapes(md) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


class TensorReader:
    """Reads global tensors of a dist checkpoint by key (whatever TP/PP layout wrote them).

    The DCP metadata is read once. Each stored chunk is loaded straight from its byte range of its file (DCP's own
    load would re-read the metadata pickle and copy every chunk once more into the destination: together 3x the
    CPU time of this path on the 1B-parameter benchmark); a tensor stored as one chunk is returned as loaded, one of
    several chunks is assembled. Chunks written with DCP storage extensions (compression) go through `dcp.load`.
    `mmap`: a chunk that fills its file (one tensor per file, as `write_tensors` and megatron write them) is returned
    mapped from the page cache instead of read into new memory (export: 4.9 -> 3.5 s on the 1B benchmark model, the
    writes then copy straight from the page cache); the files must not change while such tensors are alive."""

    def __init__(self, ckpt_dir: str | Path, *, mmap: bool = False) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        self.dir, self.mmap = str(ckpt_dir), mmap
        self._reader = FileSystemReader
        self._md = FileSystemReader(self.dir).read_metadata()
        self.meta = _shapes(self._md)

    def __contains__(self, key: str) -> bool:
        return key in self.meta

    def read(self, key: str) -> torch.Tensor:
        return self.read_many([key])[key]

    def read_many(self, keys: list[str]) -> dict[str, torch.Tensor]:
        missing = [k for k in keys if k not in self.meta]
        if missing:
            raise KeyError(f"{self.dir}: no tensor {missing[0]!r} in the checkpoint")
        out = {k: self._read_direct(k) for k in keys}
        slow = [k for k, t in out.items() if t is None]
        if slow:
            sd = {k: torch.empty(self.meta[k][0], dtype=self.meta[k][1]) for k in slow}
            dcp.load(sd, storage_reader=self._reader(self.dir), no_dist=True)
            out.update(sd)
        return out

    def row_chunks(self, key: str) -> dict[tuple[int, int], Callable[[], torch.Tensor]]:
        """(first row, rows) -> loader of each stored chunk that spans whole rows (all other dims full) and is stored
        plainly: reading the blocks one by one skips assembling the tensor (fc1's [gate; up] on export: the
        assembled copy cost ~15% of a 0.8 GB export's wall time on the dev VM)."""
        shape = self.meta[key][0]
        out = {}
        for c in self._md.state_dict_metadata[key].chunks:
            info = self._md.storage_data[MetadataIndex(key, c.offsets)]
            if all(o == 0 for o in c.offsets[1:]) and tuple(c.sizes[1:]) == tuple(shape[1:]) \
                    and not info.transform_descriptors:
                out[(c.offsets[0], c.sizes[0])] = lambda c=c, info=info: self._load_chunk(key, c, info)
        return out

    def _load_chunk(self, key: str, c, info) -> torch.Tensor:
        from torch.distributed.checkpoint.utils import _create_file_view

        dtype = self.meta[key][1]
        path = Path(self.dir) / info.relative_path
        if self.mmap and info.offset == 0 and info.length == path.stat().st_size:
            t = torch.load(path, mmap=True, map_location="cpu", weights_only=True)
        else:
            with open(path, "rb") as f:
                t = torch.load(_create_file_view(f, info.offset, info.length), map_location="cpu", weights_only=True)
        if tuple(t.shape) != tuple(c.sizes) or t.dtype != dtype:
            raise ValueError(f"{self.dir}: {key} chunk at {list(c.offsets)} is {t.dtype} {list(t.shape)}, the "
                             f"metadata says {dtype} {list(c.sizes)}")
        return t

    def _read_direct(self, key: str) -> torch.Tensor | None:
        shape, dtype = self.meta[key]
        chunks = self._md.state_dict_metadata[key].chunks
        infos = [self._md.storage_data[MetadataIndex(key, c.offsets)] for c in chunks]
        if any(i.transform_descriptors for i in infos):
            return None
        out = None
        for c, info in zip(chunks, infos):
            t = self._load_chunk(key, c, info)
            if len(chunks) == 1 and tuple(c.sizes) == tuple(shape):
                return t
            if out is None:
                out = torch.empty(shape, dtype=dtype)
            view = out
            for dim, (o, n) in enumerate(zip(c.offsets, c.sizes)):
                view = view.narrow(dim, o, n)
            view.copy_(t)
        return out if out is not None else torch.empty(shape, dtype=dtype)
