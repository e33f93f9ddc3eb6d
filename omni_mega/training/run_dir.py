"""Who owns a run directory, and what a new run may do to an old one.

One process group trains in a run directory at a time: rank 0 takes an exclusive `flock` on `<run>/.lock` for the
life of the process (the file says which host and PID hold it), so a second `omni-mega train` on the same directory
refuses at once instead of interleaving checkpoints and metrics. A fresh run (no `--resume`) refuses a directory that
already holds a run, unless `--overwrite` moves the old run aside (renamed, never deleted). Temporaries of a killed
run (checkpoints half written as `*.tmp`) are removed by the next owner.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import shutil
import socket
from pathlib import Path

log = logging.getLogger(__name__)
LOCK = ".lock"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (held by another process, or holds another run)."""


class RunDirLock:
    """An exclusive lock on `<run_dir>/.lock`, held until `release()` or process exit."""

    def __init__(self, run_dir: Path) -> None:
        self.path, self.fd = Path(run_dir) / LOCK, -1
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = -1
            raise RunDirError(f"{run_dir} is in use by {holder}; wait for it to finish or use another --run-dir") \
                from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.release()


def holds_run(run_dir: Path) -> str | None:
    """What shows that `run_dir` holds a run (checkpoints or metrics), or None."""
    run_dir = Path(run_dir)
    steps = sorted(p.name for p in (run_dir / "ckpt").glob("step_*")) if (run_dir / "ckpt").is_dir() else []
    if steps:
        return f"{len(steps)} checkpoint dir(s) up to {steps[-1]}"
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        return "a metrics.jsonl"
    return None


def move_aside(run_dir: Path) -> Path:
    """Renames `run_dir` to `<run_dir>.prev-<UTC time>` (a new name each time) and recreates it empty."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    dest = run_dir.with_name(f"{run_dir.name}.prev-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir.with_name(f"{run_dir.name}.prev-{stamp}-{n}")
    os.replace(run_dir, dest)
    run_dir.mkdir(parents=True)
    return dest


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Checkpoint dirs and pointer files left half-written by a killed run (`*.tmp`); only call while owning the dir."""
    ckpt = Path(run_dir) / "ckpt"
    stale = sorted(ckpt.glob("*.tmp")) if ckpt.is_dir() else []
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return stale


def claim(run_dir: Path, *, resume: str | None, overwrite: bool) -> RunDirLock:
    """Makes `run_dir` this run's: creates it, takes the lock, refuses (RunDirError) or moves aside an old run for a
    fresh start, removes stale temporaries. Call on rank 0 only."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunDirLock(run_dir)
    except OSError as e:
        raise RunDirError(f"cannot use run dir {run_dir}: {e.strerror or e}") from None
    old = holds_run(run_dir) if resume is None else None
    if old and not overwrite:
        lock.release()
        raise RunDirError(f"{run_dir} already holds a run ({old}); pass --resume auto to continue it or --overwrite "
                          "to move it aside and start afresh")
    if old:
        lock.release()
        dest = move_aside(run_dir)
        log.info("--overwrite: the previous run in %s was moved to %s", run_dir, dest)
        lock = RunDirLock(run_dir)
    for p in remove_stale_temporaries(run_dir):
        log.info("removed %s (left by an interrupted checkpoint write)", p)
    return lock
