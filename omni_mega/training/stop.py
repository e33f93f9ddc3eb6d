"""Stop requests: checkpoint now and exit cleanly, so a job killed at its time limit loses no steps.

A SLURM job gets `#SBATCH --signal=B:USR1@300`; the batch script's trap creates `<run dir>/SAVE_AND_EXIT` (a file,
because a signal does not reliably reach every rank through srun and torchrun) and requeues the job, which resumes
with `--resume auto`. A rank that gets SIGUSR1 directly (e.g. `srun --signal=USR1@300 python -m omni_mega` with one
task per GPU) sets the same request. SIGTERM is left alone: torchrun sends it to tear workers down. The trainer polls
at every step end (only rank 0 touches the file system); the request is all-reduced so every rank stops after the
same step.
"""

from __future__ import annotations

import signal
from pathlib import Path

import torch
import torch.distributed as dist

from omni_mega.runtime.collectives import any_true

STOP_FILE = "SAVE_AND_EXIT"


class StopRequest:
    def __init__(self, run_dir: Path, device: torch.device, *, handle_signals: bool = True) -> None:
        self.file = Path(run_dir) / STOP_FILE
        self.device = device
        self.signalled = False
        if handle_signals:
            try:
                signal.signal(signal.SIGUSR1, self._on_signal)
            except ValueError:  # not the main thread (e.g. inside a test runner thread): the file still works
                pass

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def requested(self) -> bool:
        """True on every rank when any rank saw the file or a signal (a collective: call it on every rank)."""
        rank0 = not dist.is_initialized() or dist.get_rank() == 0
        return any_true(self.signalled or (rank0 and self.file.exists()))

    def clear(self) -> None:
        self.file.unlink(missing_ok=True)
        self.signalled = False
