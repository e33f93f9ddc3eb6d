"""vet: Ovis visual head (Linear -> LayerNorm over V -> softmax -> Visual Embedding Table), naive vs fused.

Shapes:
- CPU  (default): N = 1,024, d_in = 256, V = 8,192, D = 512, fp32; providers naive eager (`visual_head_vet_ref`,
  materializes [N, V]), C++ blockwise kernel; `--compile` adds torch.compile(naive).
- CUDA (`--device cuda`): N = 16,384, d_in = 4,608, V = 65,536, D = 4,096, bf16; naive eager, torch.compile(naive),
  CUDA blockwise kernel, Triton kernels (forward and backward); CUDA events, torch.cuda.max_memory_allocated, % of bf16
  tensor-core peak.
Modes: fwd (no grad) and fwd+bwd (gradients of x, head_weight, ln_weight, ln_bias, table).
FLOPs are the naive path's matmul FLOPs (fwd 2*N*V*(d_in + D), fwd+bwd 3x that) for every provider, so TFLOP/s and
%peak compare useful work; the fused path also does W's moments (+ 2*V*d_in^2 per call), and in backward recomputes
the logits blocks (+ 2*N*V*d_in) and adds the LayerNorm correction (+ 2*V*d_in^2), see omni_mega/ops/vet.py; that
is in its time but not in its FLOPs.
Peak MB is the growth over the inputs during one call (outputs and weight gradients included, for both paths).
On CPU it is sampled RSS; glibc's adaptive mmap threshold would keep freed blocks resident and hide later peaks, so
the script re-executes itself with MALLOC_MMAP_THRESHOLD_ fixed.

    .venv/bin/python benchmarks/ops/bench_vet.py [--threads 1] [--pairs 7] [--out]    # CPU
    python benchmarks/ops/bench_vet.py --device cuda [--out]               # GPU
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks import harness  # noqa: E402
from omni_mega.ops import visual_head_vet, visual_head_vet_ref  # noqa: E402

SHAPES = {  # (N, d_in, V, D, dtype)
    "cpu": (1024, 256, 8192, 512, torch.float32),
    "cuda": (16384, 4608, 65536, 4096, torch.bfloat16),
}
NUM_INDICATORS = 0  # V is the softmax width; Ovis's few indicator rows do not change the cost


def make_inputs(n, d_in, v, d, dtype, device):
    x = torch.randn(n, d_in, dtype=dtype, device=device)
    w = (torch.randn(v, d_in, device=device) / d_in**0.5).to(dtype)
    gamma = torch.ones(v, dtype=dtype, device=device)
    beta = torch.zeros(v, dtype=dtype, device=device)
    table = (torch.randn(v + NUM_INDICATORS, d, device=device) * 0.02).to(dtype)
    return [x, w, gamma, beta, table], torch.randn(n, d, dtype=dtype, device=device)


def providers(device: str, with_compile: bool) -> dict:
    kw = dict(num_indicators=NUM_INDICATORS)
    out = {"naive eager": functools.partial(visual_head_vet_ref, **kw)}
    if with_compile:
        out["torch.compile(naive)"] = torch.compile(functools.partial(visual_head_vet_ref, **kw))
    out["fused " + ("cuda" if device == "cuda" else "cpp")] = functools.partial(
        visual_head_vet, backend="cuda" if device == "cuda" else "cpp", **kw
    )
    if device == "cuda":
        try:
            import triton  # noqa: F401

            # Triton GEMM tiles with the LayerNorm/softmax arithmetic in their epilogues, forward and backward.
            out["fused triton"] = functools.partial(visual_head_vet, backend="triton", **kw)
        except Exception as e:
            print(f"# triton provider skipped: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def calls(fn, ins: list, ins_g: list, grad: torch.Tensor) -> dict:
    """{mode: zero-argument call} for one provider."""

    def fwd():
        with torch.no_grad():
            return fn(*ins)

    def full():
        # autograd.grad: fresh gradients every call (no accumulation into .grad between repeats)
        return torch.autograd.grad(fn(*ins_g), ins_g, grad)

    return {"fwd": fwd, "fwd+bwd": full}


def run(device: str, shape: tuple, with_compile: bool, repeats: int) -> tuple[list[harness.Result], dict]:
    n, d_in, v, d, dtype = shape
    ins, grad = make_inputs(n, d_in, v, d, dtype, device)
    ins_g = [t.clone().requires_grad_() for t in ins]
    flops_fwd = 2 * n * v * (d_in + d)
    label = f"N={n} d_in={d_in} V={v} D={d} {str(dtype).removeprefix('torch.')}"
    results, by_provider = [], {}
    for name, fn in providers(device, with_compile).items():
        by_provider[name] = calls(fn, ins, ins_g, grad)
        for mode, flops in (("fwd", flops_fwd), ("fwd+bwd", 3 * flops_fwd)):
            r = harness.measure("vet", name, mode, label, by_provider[name][mode], device=device, warmup=2,
                                repeats=repeats, flops=flops, flops_dtype="bf16" if dtype == torch.bfloat16 else "fp32")
            results.append(r)
            print(f"# {label} {name} {mode}: {r.ms:.2f} ms, peak {r.peak_mb:.1f} MB", file=sys.stderr)
    return results, by_provider


def paired(by_provider: dict, pairs: int) -> str:
    """Naive and fused calls alternated (N F N F ...) so both see the same load on shared cores.

    Per pair, the fused/naive ratio of wall time and of process CPU time (all threads); the CPU-time ratio is the
    steadier one when other jobs compete for the cores (waiting for a core is not CPU time). Median and range.
    """
    naive = by_provider["naive eager"]
    fused = next(c for p, c in by_provider.items() if p.startswith("fused"))
    lines = []
    for mode in ("fwd", "fwd+bwd"):
        walls, cpus = [], []
        for _ in range(pairs):
            t = []
            for call in (naive[mode], fused[mode]):
                w0, c0 = time.perf_counter(), time.process_time()
                call()
                t.append((time.perf_counter() - w0, time.process_time() - c0))
            walls.append(t[1][0] / t[0][0])
            cpus.append(t[1][1] / t[0][1])
        lines.append(f"- paired {mode} ({pairs} alternating pairs): fused/naive wall {statistics.median(walls):.2f}x "
                     f"(range {min(walls):.2f}-{max(walls):.2f}), CPU time {statistics.median(cpus):.2f}x "
                     f"(range {min(cpus):.2f}-{max(cpus):.2f})")
    return "\n".join(lines)


def summary(results: list[harness.Result], shape: tuple) -> str:
    """Time and memory ratios; memory also net of what both paths must return (output, or output + gradients)."""
    n, d_in, v, d, dtype = shape
    size = torch.empty((), dtype=dtype).element_size() / 2**20
    returned = {"fwd": n * d * size, "fwd+bwd": (n * d + n * d_in + v * d_in + 2 * v + (v + NUM_INDICATORS) * d) * size}
    lines = []
    for mode in ("fwd", "fwd+bwd"):
        rows = {r.provider: r for r in results if r.mode == mode}
        naive = rows.get("naive eager")
        fused = next((r for p, r in rows.items() if p.startswith("fused")), None)
        if naive and fused and naive.ms > 0 and naive.peak_mb > 0:
            net_f, net_n = fused.peak_mb - returned[mode], naive.peak_mb - returned[mode]
            lines.append(f"- {mode}: fused/naive time {fused.ms / naive.ms:.2f}x; peak memory {fused.peak_mb:.1f} vs "
                         f"{naive.peak_mb:.1f} MB ({100 * fused.peak_mb / naive.peak_mb:.0f}%); net of the "
                         f"{returned[mode]:.1f} MB of results both must return: {net_f:.1f} vs {net_n:.1f} MB "
                         f"({100 * net_f / max(net_n, 1e-9):.0f}%)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shape", type=int, nargs=4, metavar=("N", "D_IN", "V", "D"), help="override the default shape")
    ap.add_argument("--compile", action="store_true", help="add torch.compile(naive) (always on for cuda)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=7, help="CPU: alternating naive/fused pairs for the paired ratios")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU): 1 isolates the algorithms' cost from "
                    "threading effects on shared cores")
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_<name>.md")
    ap.add_argument("--name", default="vet", help="results file name (e.g. to keep an earlier run of the same day)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    n, d_in, v, d, dtype = SHAPES[args.device]
    if args.shape:
        n, d_in, v, d = args.shape
    results, by_provider = run(args.device, (n, d_in, v, d, dtype), args.compile or args.device == "cuda",
                               args.repeats)
    notes = summary(results, (n, d_in, v, d, dtype))
    if args.device == "cpu" and args.pairs > 0:
        notes += "\n" + paired(by_provider, args.pairs)
    if args.device == "cpu" and hasattr(os, "getloadavg"):
        # Other jobs share the cores on dev machines: the load says how far to trust the times.
        notes += f"\n- 1-minute load average at the end of the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    print(notes, file=sys.stderr)
    out = harness.results_path(args.name) if args.out else None
    harness.emit(results, title="vet: naive Ovis head vs fused blockwise", out=out,
                 notes=notes + "\n\nFLOPs = the naive path's matmul FLOPs for every provider (the fused path's "
                 "recomputation is in its time, not its FLOPs). Peak MB = growth during one call, outputs and "
                 "weight gradients included.")


if __name__ == "__main__":
    # Fixed mmap threshold: freed large blocks go back to the OS, so sampled RSS sees each call's own peak.
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
