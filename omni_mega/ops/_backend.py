"""Backend choice shared by every op: the fastest implementation available for the tensor's device, unless forced.

Backends: "ref" (plain PyTorch, always available), "cpp" (C++ CPU kernel in omni_mega._C), "cuda" (CUDA kernel in
omni_mega._C_cuda), "triton". Ops that registered a dispatcher op reach "cpp"/"cuda" through `torch.ops.omni_mega`,
so the device of the input picks the kernel.
"""

from __future__ import annotations

import torch

from omni_mega.ops import _ext

BACKENDS = ("auto", "ref", "cpp", "cuda", "triton")


def triton_available(device: torch.device) -> bool:
    """Triton runs on CUDA devices, or on CPU under TRITON_INTERPRET=1 (set before the kernels are imported)."""
    import os

    try:
        import triton  # noqa: F401
    except Exception:
        return False
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(backend: str, device: torch.device, *, op: str, has_triton: bool = False, prefer_triton: bool = False) -> str:
    """Returns the concrete backend for `op` on `device`, raising a clear error when a forced one is unavailable."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    native = "cuda" if device.type == "cuda" else "cpp"
    native_ok = _ext.has_cuda_extension() if native == "cuda" else _ext.has_cpu_extension()
    if backend == "auto":
        if prefer_triton and has_triton and device.type == "cuda" and triton_available(device):
            return "triton"
        return native if native_ok and device.type in ("cpu", "cuda") else "ref"
    if backend in ("cpp", "cuda"):
        if backend != native:
            raise ValueError(f"{op}: backend={backend!r} does not run on device {device}")
        if not native_ok:
            lib = "_C_cuda" if backend == "cuda" else "_C"
            raise RuntimeError(
                f"{op}: backend={backend!r} needs omni_mega.{lib}, which is not built or failed to load: "
                f"{_ext.load_error(lib)}. Run `make build`."
            )
    if backend == "triton":
        if not has_triton:
            raise ValueError(f"{op}: has no Triton kernel")
        if not triton_available(device):
            raise RuntimeError(f"{op}: Triton needs a CUDA device or TRITON_INTERPRET=1 on CPU")
    return backend
