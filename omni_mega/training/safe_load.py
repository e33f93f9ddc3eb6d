"""Loading a checkpoint runs no code from it.

A checkpoint reaches pickle in three places when megatron's dist_checkpointing loads it:
  - torch DCP's `FileSystemReader.read_metadata` unpickles `dist/.metadata` with plain `pickle.load`;
  - torch DCP's `DefaultLoadPlanner.load_bytes` unpickles non-tensor items with `torch.load(weights_only=False)`;
  - megatron's `common.pt` and sharded-object files go through `torch.load` with the default `weights_only`
    (which the TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD environment variable turns off).
A crafted file in any of them runs arbitrary code (a `__reduce__` calling os.system). `restricted_loads()` closes
all three while it is active: `.metadata` goes through `MetadataUnpickler`, which admits only the classes a DCP
metadata file holds (recorded from a real checkpoint of this project), and every `torch.load` runs with
`weights_only=True`. torch 2.13 has no safe path of its own for `.metadata`. The patches are process-wide while the
context is open; the trainer loads checkpoints before training starts, with no other thread loading.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import pathlib
import pickle
from typing import Any, Iterator

import torch
from torch.distributed.checkpoint import filesystem as dcp_fs
from torch.distributed.checkpoint import metadata as dcp_meta
from torch.distributed.checkpoint import planner as dcp_planner

# (module, name) -> what find_class returns. Everything a DCP .metadata of this project was seen to hold, plus the
# other metadata dataclasses and enums of the same modules and plain containers.
_DCP_CLASSES = {
    dcp_meta: ("ChunkStorageMetadata", "_MEM_FORMAT_ENCODING", "TensorProperties", "TensorStorageMetadata",
               "BytesStorageMetadata", "StorageMeta", "Metadata", "MetadataIndex"),
    dcp_planner: ("WriteItemType", "LoadItemType", "BytesIOWriteData", "TensorWriteData", "WriteItem", "ReadItem",
                  "SavePlan", "LoadPlan"),
    dcp_fs: ("_StorageInfo",),
}
_BUILTINS = ("set", "frozenset", "slice", "complex", "tuple", "list", "dict", "int", "float", "str", "bytes", "bool")


def _allowed() -> dict[tuple[str, str], Any]:
    allowed = {(mod.__name__, name): getattr(mod, name) for mod, names in _DCP_CLASSES.items() for name in names
               if hasattr(mod, name)}
    allowed.update({("builtins", n): getattr(builtins, n) for n in _BUILTINS})
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("torch", "Size")] = torch.Size
    # StorageMeta.checkpoint_id is the writer's path when torch's FileSystemWriter saved the checkpoint (import-hf
    # does): a path object is built from strings and runs nothing.
    allowed.update({("pathlib", n): getattr(pathlib, n) for n in ("PosixPath", "PurePosixPath", "WindowsPath",
                                                                  "PureWindowsPath")})
    # A layout is pickled as torch.serialization._get_layout("torch.strided"): a lookup in a table of layouts.
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    allowed.update({("torch", n): v for n, v in vars(torch).items() if isinstance(v, torch.dtype)})
    return allowed


ALLOWED = _allowed()


class CheckpointLoadRefused(pickle.UnpicklingError):
    """A checkpoint file asked to unpickle something that is not checkpoint data."""


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP `.metadata` file, admitting only ALLOWED globals; anything else is refused, naming the file."""

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise CheckpointLoadRefused(f"{self.where}: refusing to unpickle {module}.{name}: a checkpoint's .metadata "
                                    "holds only torch.distributed.checkpoint metadata (was the file crafted?)")

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointLoadRefused(f"{self.where}: refusing a persistent id in .metadata")


def read_dcp_metadata(reader: dcp_fs.FileSystemReader, rank: int | None = None) -> dcp_meta.Metadata:
    """What `FileSystemReader.read_metadata` returns, read through MetadataUnpickler."""
    path = reader._get_metadata_path(rank)
    with reader.fs.create_stream(path, "rb") as f:
        metadata = MetadataUnpickler(f, str(path)).load()
    if not isinstance(metadata, dcp_meta.Metadata):
        raise CheckpointLoadRefused(f"{path}: holds a {type(metadata).__name__}, not a checkpoint Metadata")
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = dcp_meta.StorageMeta()
    metadata.storage_meta.load_id = reader.load_id
    return metadata


def _restricted_read_metadata(self, *args: Any, **kwargs: Any) -> dcp_meta.Metadata:
    return read_dcp_metadata(self, kwargs.get("rank"))


@contextlib.contextmanager
def restricted_loads() -> Iterator[None]:
    """While open: `.metadata` through MetadataUnpickler and every `torch.load` with weights_only=True."""
    orig_read, orig_load = dcp_fs.FileSystemReader.read_metadata, torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return orig_load(*args, **kwargs)

    dcp_fs.FileSystemReader.read_metadata = _restricted_read_metadata
    torch.load = weights_only_load
    try:
        yield
    finally:
        dcp_fs.FileSystemReader.read_metadata = orig_read
        torch.load = orig_load
