"""Checkpoints: megatron `dist_checkpointing` for model and optimizer (reshardable across TP/PP), plus trainer state
(JSON) and per-rank RNG states, written atomically.

Layout of RUN/ckpt:
    step_0000012/            written as step_0000012.tmp/ and renamed by rank 0 once every rank is done
        dist/                dist_checkpointing: {"model": ..., "optimizer": ...} (model only holds trainable
                             parameters when the stage saves `trainable_only`)
        trainer_state.json   TrainerState (rank 0)
        rng/rank_00000.pt    RNG states, one file per rank (tensors and numbers only: loads with weights_only)
        manifest.json        size and XXH3 checksum of every file above (rank 0, after every rank has written)
        COMPLETE             written last inside the temp dir: a dir without it is incomplete
    latest                   the newest complete step dir's name, written after the rename

Resuming verifies a step dir against its manifest first (`candidates` skips one that fails, saying why) and loads
with `safe_load.restricted_loads()`, so no file of a checkpoint can make the load run code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from omni_mega.runtime.manifest import MARKER, verify_checkpoint, write_manifest
from omni_mega.training.safe_load import restricted_loads
from omni_mega.training.state import TrainerState, load_rng, save_rng

log = logging.getLogger(__name__)
__all__ = ["MARKER", "candidates", "load_checkpoint", "read_state", "resolve_ckpt", "save_checkpoint",
           "verify_checkpoint"]


# Per-layer checkpoint keys (decoder.layers.<global index>.*) instead of megatron's default stacked [num_layers, ...]
# tensors: with a few layers frozen, the optimizer holds state for only some of a stacked tensor's slices, which
# dist_checkpointing rejects as an incomplete sharding. Global indices still reshard across PP layouts.
CKPT_METADATA = {"non_homogeneous_layers": True, "distrib_optim_sharding_type": "fully_reshardable",
                 "chained_optim_avoid_prefix": True}


def _sharded_state_dict(chunks: list, metadata: dict | None = None) -> dict:
    if len(chunks) == 1:
        return chunks[0].sharded_state_dict(metadata=metadata)
    return {f"model{i}": c.sharded_state_dict(metadata=metadata) for i, c in enumerate(chunks)}


def _unwrap(chunks: list) -> list:
    return [getattr(c, "module", c) for c in chunks]


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


# ---- model only (weights travel between layouts; used by the parallel-equivalence tests) -------------------------
def save_model(chunks: list, ckpt_dir: str | Path) -> None:
    """Writes a reshardable checkpoint of the model chunks; atomic: a temp dir renamed when every rank is done."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(_sharded_state_dict(_unwrap(chunks)), str(tmp))
    _barrier()
    if _rank() == 0:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        os.replace(tmp, ckpt_dir)
    _barrier()


def load_model(chunks: list, ckpt_dir: str | Path) -> None:
    """Loads weights into the chunks, whatever TP/PP layout wrote them."""
    chunks = _unwrap(chunks)
    with restricted_loads():
        state = dist_checkpointing.load(_sharded_state_dict(chunks), str(ckpt_dir))
    if len(chunks) == 1:
        chunks[0].load_state_dict(state)
    else:
        for i, c in enumerate(chunks):
            c.load_state_dict(state[f"model{i}"])


# ---- full training checkpoints ------------------------------------------------------------------------------------
def _trainable_filter(chunks: list, ssd: dict) -> dict:
    """Keeps the entries of a (per-chunk) sharded state dict whose parameter is trainable."""
    def keep(chunk, d):
        names = {n for n, p in chunk.named_parameters() if p.requires_grad}
        return {k: v for k, v in d.items() if k in names}

    if len(chunks) == 1:
        return keep(chunks[0], ssd)
    return {f"model{i}": keep(c, ssd[f"model{i}"]) for i, c in enumerate(chunks)}


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "ckpt" / f"step_{step:07d}"


def save_checkpoint(run_dir: Path, model: list, optimizer, state: TrainerState) -> Path:
    """Saves model + optimizer (dist_checkpointing), trainer state and RNG; returns the final dir."""
    chunks = _unwrap(model)
    final = step_dir(run_dir, state.step)
    tmp = final.with_name(final.name + ".tmp")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "dist").mkdir(parents=True)
        (tmp / "rng").mkdir()
    _barrier()
    model_sd = _sharded_state_dict(chunks, CKPT_METADATA)
    if state.save == "trainable_only":
        model_sd = _trainable_filter(chunks, model_sd)
    sharded = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, metadata=CKPT_METADATA)}
    dist_checkpointing.save(sharded, str(tmp / "dist"))
    save_rng(tmp / "rng" / f"rank_{_rank():05d}.pt")
    _barrier()
    if _rank() == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(state.to_json(), indent=1, sort_keys=True))
        write_manifest(tmp)  # every rank's files are written (the barrier above); the marker comes after
        (tmp / MARKER).write_text(json.dumps({"step": state.step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest_tmp = final.parent / "latest.tmp"
        latest_tmp.write_text(final.name)
        os.replace(latest_tmp, final.parent / "latest")
    _barrier()
    return final


def read_state(ckpt: Path) -> TrainerState:
    return TrainerState.from_json(json.loads((Path(ckpt) / "trainer_state.json").read_text()))


# Verification results by step dir and the (name, size, mtime) of its files: the trainer asks about the same dirs
# more than once while resuming, and each answer reads every byte.
_verified: dict[tuple, list[str]] = {}


def _verify_cached(d: Path) -> list[str]:
    key = (str(d), tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")
                                if p.is_file())))
    if key not in _verified:
        _verified[key] = verify_checkpoint(d)
    return _verified[key]


def _problems_line(problems: list[str]) -> str:
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def candidates(run_dir: Path) -> tuple[list[Path], list[str]]:
    """Intact step dirs, newest first, and a line for each one skipped: incomplete, unreadable trainer state, or
    failing verification against its manifest (a missing, truncated or changed file)."""
    root = Path(run_dir) / "ckpt"
    good, skipped = [], []
    if not root.is_dir():
        return good, skipped
    for d in sorted(root.iterdir(), reverse=True):
        if not d.is_dir() or not d.name.startswith("step_"):
            continue
        if d.name.endswith(".tmp") or not (d / MARKER).exists():
            skipped.append(f"{d}: incomplete (no {MARKER} marker; interrupted while saving)")
            continue
        try:
            read_state(d)
        except (OSError, ValueError, TypeError) as e:
            skipped.append(f"{d}: unreadable trainer_state.json ({e})")
            continue
        problems = _verify_cached(d)
        if problems:
            skipped.append(f"{d}: fails verification: {_problems_line(problems)}")
            continue
        good.append(d)
    return good, skipped


def resolve_ckpt(path: str | Path) -> Path:
    """A step dir as given, or a run dir / ckpt dir -> its newest intact step dir. A step dir that fails
    verification is a ConfigError naming its problems."""
    p = Path(path)
    if (p / MARKER).exists():
        problems = _verify_cached(p)
        if problems:
            from omni_mega.config import ConfigError

            raise ConfigError(f"{p}: checkpoint fails verification: {_problems_line(problems)}")
        return p
    run = p.parent if p.name == "ckpt" else p
    good, _ = candidates(run)
    if not good:
        raise FileNotFoundError(f"{path}: no complete checkpoint (a step_* dir with a {MARKER} marker)")
    return good[0]


def _fill_common_step(sd, step: int) -> None:
    """megatron writes the optimizer's shared Adam step into the common (rank-0) state; when rank 0 held no trainable
    parameter it wrote none, and torch's Adam refuses a state without a step. Every parameter's step equals the
    global step (omni_mega.training.optim), so fill it in."""
    if isinstance(sd, dict):
        if isinstance(sd.get("state"), dict) and "param_groups" in sd:
            if any(isinstance(k, int) for k in sd["state"]):
                sd["state"].setdefault("common_step", torch.tensor(float(step)))
            return
        for v in sd.values():
            _fill_common_step(v, step)
    elif isinstance(sd, list):
        for v in sd:
            _fill_common_step(v, step)


def load_checkpoint(ckpt: Path, model: list, optimizer, *, with_optimizer: bool = True) -> None:
    """Loads model (+ optimizer) state from `ckpt` into the current layout (dist_checkpointing reshards). Loads
    only the model entries the checkpoint has (a trainable_only checkpoint leaves the rest as they are)."""
    chunks = _unwrap(model)
    model_sd = _present(_sharded_state_dict(chunks, CKPT_METADATA), ckpt)
    sharded = {"model": model_sd}
    if with_optimizer:
        sharded["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=CKPT_METADATA)
    with restricted_loads():
        state = dist_checkpointing.load(sharded, str(Path(ckpt) / "dist"))
    msd = state["model"]
    if len(chunks) == 1:
        chunks[0].load_state_dict(msd, strict=False)
    else:
        for i, c in enumerate(chunks):
            c.load_state_dict(msd[f"model{i}"], strict=False)
    if with_optimizer:
        _fill_common_step(state["optimizer"], read_state(ckpt).step)
        from omni_mega.training.optim import keep_missing_dist_keys

        with keep_missing_dist_keys(optimizer):  # the caller sets the Adam step afterwards (optim.set_adam_step)
            optimizer.load_state_dict(state["optimizer"])
    rng = Path(ckpt) / "rng" / f"rank_{_rank():05d}.pt"
    if with_optimizer and rng.exists():
        load_rng(rng)


def _present(model_sd: dict, ckpt: Path) -> dict:
    """The entries of a sharded model state dict whose checkpoint key exists in `ckpt` (partial checkpoints)."""
    with restricted_loads():
        meta = dist_checkpointing.load_tensors_metadata(str(Path(ckpt) / "dist"))

    def walk(d):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out[k] = walk(v)
            elif getattr(v, "key", None) in meta:
                out[k] = v
        return out

    return walk(model_sd)


def loaded_names(chunks: list, ckpt: Path) -> tuple[list[str], list[str]]:
    """(parameter names the checkpoint provides, names it does not) for this rank's chunks."""
    chunks = _unwrap(chunks)
    have, miss = [], []
    for i, c in enumerate(chunks):
        present = _present(c.sharded_state_dict(metadata=CKPT_METADATA), ckpt)
        for n, _ in c.named_parameters():
            (have if n in present else miss).append(n if len(chunks) == 1 else f"model{i}.{n}")
    return have, miss


