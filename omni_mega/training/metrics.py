"""Per-step metrics: `metrics.jsonl` (one JSON object per optimizer step) and TensorBoard scalars, rank 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        # Append: a resumed run continues the same file.
        self._file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except Exception as e:  # tensorboard missing: metrics.jsonl still has everything
                print(f"TensorBoard disabled: {e}")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            step = record["step"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, step: int, name: str = "metrics.jsonl") -> int:
    """Drops the records after `step` in place (a resumed run rewrites the steps after its checkpoint, so each step
    appears once); the file is never replaced, only cut. Returns the number of records dropped. Rows are in step
    order: everything from the first record past `step` on goes, as does a torn last line."""
    path = Path(run_dir) / name
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        cut, dropped, offset = None, 0, 0
        for line in f:
            try:
                past = json.loads(line)["step"] > step
            except (ValueError, KeyError, TypeError):  # a torn final line from a killed run
                past = True
            if past:
                cut = offset if cut is None else cut
                dropped += 1
            offset += len(line)
        if cut is not None:
            f.truncate(cut)
    return dropped
