"""One benchmark harness for every op and data benchmark.

- warm-up, then the median of repeats; CUDA events on GPU, perf_counter on CPU;
- peak memory: torch.cuda.max_memory_allocated on GPU, peak RSS growth (sampled by a thread) on CPU;
- providers: named callables measured on the same inputs; modes fwd / bwd / full are the caller's closures;
- roofline: bytes moved / peak bandwidth and FLOPs / peak throughput of the device, with the achieved fraction;
- output: CSV rows on stdout and, with --out, a markdown file for benchmarks/results/ that records the command.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

# Published dense peaks. HBM in bytes/s, tensor-core throughput in FLOP/s (no sparsity).
DEVICE_PEAKS = {
    "H100 SXM": {"bw": 3.35e12, "bf16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bw": 2.0e12, "bf16": 756e12, "fp32": 51e12},
    "H200": {"bw": 4.8e12, "bf16": 989e12, "fp32": 67e12},
    "A100": {"bw": 2.04e12, "bf16": 312e12, "fp32": 19.5e12},
}


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def device_peaks() -> dict | None:
    name = device_name()
    if "H100" in name:
        return DEVICE_PEAKS["H100 PCIe" if "PCIe" in name else "H100 SXM"]
    for key in ("H200", "A100"):
        if key in name:
            return DEVICE_PEAKS[key]
    return None


class _RssPeak:
    """Samples this process's RSS every millisecond; peak growth over the baseline approximates CPU peak memory."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


@dataclass
class Result:
    name: str
    provider: str
    mode: str
    shape: str
    ms: float
    peak_mb: float
    extra: dict = field(default_factory=dict)


def time_fn(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10, device: str = "cpu") -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU time of fn() in milliseconds, all threads of this process: unlike wall time it barely moves when
    other jobs share the machine, so a ratio of two providers' CPU times is the robust comparison on a busy host."""
    times = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        times.append((time.process_time() - c0) * 1e3)
    return statistics.median(times)


def peak_memory_mb(fn: Callable[[], object], *, device: str = "cpu") -> float:
    """Peak memory of one call above what was allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _RssPeak() as rss:
        fn()
    return (rss.peak - rss.base) / 2**20


def measure(name: str, provider: str, mode: str, shape: str, fn: Callable[[], object], *, device: str = "cpu",
            warmup: int = 3, repeats: int = 10, bytes_moved: float | None = None, flops: float | None = None,
            flops_dtype: str = "bf16") -> Result:
    ms = time_fn(fn, warmup=warmup, repeats=repeats, device=device)
    mem = peak_memory_mb(fn, device=device)
    extra: dict = {}
    peaks = device_peaks() if device == "cuda" else None
    if bytes_moved is not None:
        extra["GB/s"] = round(bytes_moved / (ms * 1e-3) / 1e9, 1)
        if peaks:
            extra["%HBM"] = round(100 * bytes_moved / (ms * 1e-3) / peaks["bw"], 1)
    if flops is not None:
        extra["TFLOP/s"] = round(flops / (ms * 1e-3) / 1e12, 2)
        if peaks:
            extra["%peak"] = round(100 * flops / (ms * 1e-3) / peaks[flops_dtype], 1)
    return Result(name, provider, mode, shape, round(ms, 4), round(mem, 1), extra)


def to_csv(results: list[Result]) -> str:
    keys = sorted({k for r in results for k in r.extra})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["name", "provider", "mode", "shape", "ms", "peak_mb", *keys])
    for r in results:
        w.writerow([r.name, r.provider, r.mode, r.shape, r.ms, r.peak_mb, *[r.extra.get(k, "") for k in keys]])
    return buf.getvalue()


def to_markdown(results: list[Result], *, title: str, notes: str = "") -> str:
    keys = sorted({k for r in results for k in r.extra})
    head = ["name", "provider", "mode", "shape", "ms", "peak MB", *keys]
    lines = [
        f"# {title}",
        "",
        f"- date: {_dt.date.today().isoformat()}",
        f"- device: {device_name()}",
        f"- torch: {torch.__version__}",
        f"- command: `{' '.join(sys.argv)}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results:
        row = [r.name, r.provider, r.mode, r.shape, f"{r.ms:.4f}", f"{r.peak_mb:.1f}", *[str(r.extra.get(k, "")) for k in keys]]
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def emit(results: list[Result], *, title: str, out: str | None = None, notes: str = "") -> None:
    """Prints CSV; with `out`, also writes the markdown report (benchmarks/results/<date>_<device>_<name>.md)."""
    print(to_csv(results), end="")
    if out:
        with open(out, "w") as f:
            f.write(to_markdown(results, title=title, notes=notes))
        print(f"wrote {out}")


def results_path(name: str) -> str:
    import os
    import re

    dev = re.sub(r"[^A-Za-z0-9]+", "-", device_name()).strip("-").lower()[:40]
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "results", f"{_dt.date.today().isoformat()}_{dev}_{name}.md")


__all__ = ["Result", "measure", "time_fn", "peak_memory_mb", "emit", "results_path", "device_name", "device_peaks", "asdict"]
