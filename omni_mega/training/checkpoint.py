"""Model weights through megatron `dist_checkpointing`: saved under one TP/PP layout, loadable under another."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing


def _sharded_state_dict(chunks: list) -> dict:
    if len(chunks) == 1:
        return chunks[0].sharded_state_dict()
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def _unwrap(chunks: list) -> list:
    return [getattr(c, "module", c) for c in chunks]


def save_model(chunks: list, ckpt_dir: str | Path) -> None:
    """Writes a reshardable checkpoint of the model chunks; atomic: a temp dir renamed when every rank is done."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    dist_checkpointing.save(_sharded_state_dict(_unwrap(chunks)), str(tmp))
    if dist.is_initialized():
        dist.barrier()
    if rank0:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        os.replace(tmp, ckpt_dir)
    if dist.is_initialized():
        dist.barrier()


def load_model(chunks: list, ckpt_dir: str | Path) -> None:
    """Loads weights into the chunks, whatever TP/PP layout wrote them."""
    chunks = _unwrap(chunks)
    state = dist_checkpointing.load(_sharded_state_dict(chunks), str(ckpt_dir))
    if len(chunks) == 1:
        chunks[0].load_state_dict(state)
    else:
        for i, c in enumerate(chunks):
            c.load_state_dict(state[f"model{i}"])
