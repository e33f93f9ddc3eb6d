"""rope_2d: fused 2D RoPE over packed images, x [T, H, D] THD, forward and forward+backward.

Shapes: Qwen2-VL (D = 80, layout "half") and Kimi-VL (D = 72, layout "interleaved"), H = 16, positions from
`vision_positions` for a pack of 64x64-patch images (merge 2). Providers:
- CPU (default T = 8192, fp32): reference eager (plain PyTorch), C++ kernel; `--compile` adds torch.compile(reference).
- CUDA (default T = 65536, bf16): reference eager, torch.compile(reference), CUDA kernel, Triton kernel; CUDA events
  and % of the HBM roofline from bytes moved.
Bytes moved: forward reads x and writes y once (2 * T*H*D * element size) plus pos (8 bytes a token); forward+backward
adds the same again for the gradient (read dy, write dx).

    .venv/bin/python benchmarks/ops/bench_rope_2d.py [--out]                     # CPU
    python benchmarks/ops/bench_rope_2d.py --device cuda [--out]                  # GPU
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks import harness  # noqa: E402
from omni_mega.ops import rope_2d, rope_2d_ref, vision_positions  # noqa: E402

CASES = [(80, "half"), (72, "interleaved")]  # (D, layout): Qwen2-VL, Kimi-VL
HEADS = 16
THETA = 10000.0


def make_inputs(tokens: int, dim: int, dtype: torch.dtype, device: str):
    """x [T, H, D] in `dtype`, pos int32 [T, 2] for T/4096 images of 64x64 patches, dy like x."""
    n_img = max(1, tokens // 4096)
    pos, _ = vision_positions(torch.tensor([[1, 64, 64]] * n_img), 2)
    pos = pos[:tokens]
    if pos.size(0) < tokens:  # T not a multiple of 4096: top up with one more image's positions
        pos = torch.cat([pos, pos[: tokens - pos.size(0)]])
    x = torch.randn(tokens, HEADS, dim, dtype=dtype, device=device)
    return x, pos.to(device), torch.randn_like(x)


def providers(device: str, layout: str, with_compile: bool) -> dict:
    kw = dict(theta=THETA, layout=layout)
    out = {"ref eager": functools.partial(rope_2d_ref, **kw)}
    if with_compile:
        out["torch.compile(ref)"] = torch.compile(functools.partial(rope_2d_ref, **kw))
    if device == "cuda":
        out["cuda"] = functools.partial(rope_2d, backend="cuda", **kw)
        try:
            import triton  # noqa: F401

            out["triton"] = functools.partial(rope_2d, backend="triton", **kw)
        except Exception as e:
            print(f"# triton provider skipped: {type(e).__name__}: {e}", file=sys.stderr)
    else:
        out["cpp"] = functools.partial(rope_2d, backend="cpp", **kw)
    return out


def bench_case(tokens, dim, layout, dtype, device, with_compile, repeats) -> list[harness.Result]:
    x, pos, dy = make_inputs(tokens, dim, dtype, device)
    xg = x.clone().requires_grad_()
    io = tokens * HEADS * dim * x.element_size()
    shape = f"T={tokens} H={HEADS} D={dim} {layout} {str(dtype).removeprefix('torch.')}"
    results = []
    for name, fn in providers(device, layout, with_compile).items():
        fwd = functools.partial(fn, x, pos)

        def full(fn=fn):
            xg.grad = None
            fn(xg, pos).backward(dy)

        for mode, call, nbytes in (("fwd", fwd, 2 * io + 8 * tokens), ("fwd+bwd", full, 4 * io + 16 * tokens)):
            r = harness.measure("rope_2d", name, mode, shape, call, device=device, warmup=3, repeats=repeats,
                                bytes_moved=nbytes)
            results.append(r)
            print(f"# {shape} {name} {mode}: {r.ms:.3f} ms", file=sys.stderr)
    return results


def reuse_freed_memory() -> bool:
    """glibc: serve big blocks from the heap and keep freed ones (like a caching allocator).

    Otherwise every 40 MB output is a fresh mmap whose page faults cost ~30 ms on the 2-core dev VM (measured:
    `torch.empty_like(x).fill_(1)` at T=8192, D=80 fp32: 30 ms, 8 ms with reuse), drowning the kernels in OS time.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-4, 0) and libc.mallopt(-1, 2**31 - 1))  # M_MMAP_MAX = 0, M_TRIM_THRESHOLD
    except Exception:
        return False


def speedups(results: list[harness.Result], base: str = "ref eager") -> str:
    """Markdown lines: every provider's speedup over `base` for each (shape, mode)."""
    ref = {(r.shape, r.mode): r.ms for r in results if r.provider == base}
    lines = [f"Speedup over {base}:", ""]
    for r in results:
        if r.provider != base and (r.shape, r.mode) in ref:
            lines.append(f"- {r.shape} {r.mode}: {r.provider} {ref[(r.shape, r.mode)] / r.ms:.1f}x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tokens", type=int, default=None, help="T (default 8192 on CPU, 65536 on CUDA)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--compile", action="store_true", help="add torch.compile(reference) on CPU (always on CUDA)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-malloc-reuse", action="store_true", help="CPU: keep glibc's default mmap of big blocks")
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_rope_2d.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = args.device == "cuda"
    reuse = not on_gpu and not args.no_malloc_reuse and reuse_freed_memory()
    tokens = args.tokens or (65536 if on_gpu else 8192)
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    results = []
    for dim, layout in CASES:
        results += bench_case(tokens, dim, layout, dtype, args.device, on_gpu or args.compile, args.repeats)
    notes = speedups(results)
    if not on_gpu:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
        notes += (
            f"\n\nglibc freed-block reuse (mallopt M_MMAP_MAX=0): {'on' if reuse else 'off'} (with it on, peak MB, "
            "measured as RSS growth, reads ~0 because freed blocks are reused). "
            f"CPU threads: {torch.get_num_threads()}; load average (1/5/15 min) at the end: {load} on "
            f"{os.cpu_count()} cores (other jobs share the machine: times are noisy). GPU rows: run with --device cuda "
            "on a GPU machine."
        )
    out = harness.results_path("rope_2d") if args.out else None
    harness.emit(results, title="rope_2d: fused 2D RoPE over packed images", out=out, notes=notes)


if __name__ == "__main__":
    main()
