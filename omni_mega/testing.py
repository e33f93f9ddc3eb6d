"""Numerical checks shared by tests and benchmarks (one tolerance table per dtype).

The oracle is always a plain-PyTorch reference run in float64. A kernel in a low precision (bf16/fp16) passes when
its error against the oracle is at most `factor` (2) times the error of the same reference run in that precision,
plus a small floor; fp32/fp64 kernels use the table below.
"""

from __future__ import annotations

import torch

# (atol, rtol) for kernels computing in this dtype, compared to a float64 oracle.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}
LOW_PRECISION = (torch.bfloat16, torch.float16)


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def assert_matches_oracle(
    actual: torch.Tensor,
    oracle64: torch.Tensor,
    *,
    ref_same_dtype: torch.Tensor | None = None,
    factor: float = 2.0,
    floor: float | None = None,
    name: str = "output",
) -> None:
    """Asserts `actual` is as close to the float64 `oracle64` as its dtype allows.

    Low precision: err(actual) <= factor * err(ref_same_dtype) + floor (ref_same_dtype required).
    fp32/fp64: torch.testing.assert_close with the TOLERANCES entry.
    """
    if actual.shape != oracle64.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != oracle {tuple(oracle64.shape)}")
    dtype = actual.dtype
    if dtype in LOW_PRECISION:
        if ref_same_dtype is None:
            raise ValueError(f"{name}: a {dtype} check needs the reference run in {dtype}")
        err = max_abs_err(actual, oracle64)
        ref_err = max_abs_err(ref_same_dtype, oracle64)
        scale = oracle64.abs().max().item() if oracle64.numel() else 1.0
        fl = floor if floor is not None else 1e-3 * max(scale, 1.0)
        if not err <= factor * ref_err + fl:
            raise AssertionError(
                f"{name}: {dtype} max error {err:.3e} > {factor} x reference-in-{dtype} error {ref_err:.3e} + {fl:.1e}"
            )
        return
    atol, rtol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    if floor is not None:
        atol = max(atol, floor)
    torch.testing.assert_close(actual.double().cpu(), oracle64.double().cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def devices() -> list[str]:
    """CPU always; CUDA when present (op tests run the CUDA kernels only on a GPU machine)."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def native_backends(device: str) -> list[str]:
    """The reference plus whichever compiled kernel runs on `device` in this build."""
    from omni_mega.ops import has_cpu_extension, has_cuda_extension

    names = ["ref"]
    if device == "cpu" and has_cpu_extension():
        names.append("cpp")
    if device == "cuda" and has_cuda_extension():
        names.append("cuda")
    return names
