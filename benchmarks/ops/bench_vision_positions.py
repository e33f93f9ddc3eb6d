"""vision_positions: reference vs C++ (CPU) vs CUDA kernel.

    python benchmarks/ops/bench_vision_positions.py [--out]

Shapes: a packed batch of 64 images of mixed native resolutions (merge 2), about 65k tokens, and one of 512 small
images. The op writes 8 bytes per token (int32 row, col) and reads a tiny grid, so the roofline is the write
bandwidth: bytes_moved = 8 * T.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.harness import emit, measure, results_path  # noqa: E402
from omni_mega.ops import has_cpu_extension, has_cuda_extension, vision_positions, vision_positions_ref  # noqa: E402


def grids() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mixed = torch.stack([torch.ones(64, dtype=torch.long), torch.randint(8, 56, (64,), generator=g) * 2,
                         torch.randint(8, 56, (64,), generator=g) * 2], 1)
    small = torch.tensor([[1, 4, 6]] * 512)
    return {"64 mixed images": mixed, "512 small images": small}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", action="store_true", help="write the markdown report to benchmarks/results/")
    args = ap.parse_args()
    results = []
    for name, grid in grids().items():
        tokens = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
        shape = f"{name}, T={tokens}"
        providers = {"reference": ("cpu", lambda g=grid: vision_positions_ref(g, 2))}
        if has_cpu_extension():
            providers["cpp"] = ("cpu", lambda g=grid: vision_positions(g, 2, backend="cpp"))
        if torch.cuda.is_available() and has_cuda_extension():
            gc = grid.cuda()
            providers["cuda"] = ("cuda", lambda g=gc: vision_positions(g, 2, backend="cuda"))
        for provider, (device, fn) in providers.items():
            results.append(measure("vision_positions", provider, "fwd", shape, fn, device=device, warmup=3,
                                   repeats=20, bytes_moved=8 * tokens))
    emit(results, title="vision_positions", out=results_path("vision_positions") if args.out else None,
         notes="CUDA rows include the host planning (one D2H copy of the grid), as training sees it.")


if __name__ == "__main__":
    main()
