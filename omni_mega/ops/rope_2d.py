"""`rope_2d`: fused 2D rotary position embedding for packed vision tokens (THD), in two layouts.

Both layouts rotate R/2 channel pairs (a, b) of the first R = rotary_dim channels of every head by an angle
phi = pos[axis] * f_i with f_i = theta^(-4i/R), i < R/4, computed in fp32 (fp64 for fp64 inputs):

    out_a = x_a cos(phi) - x_b sin(phi),    out_b = x_b cos(phi) + x_a sin(phi)

- "half" (Qwen2-VL, Ovis2.5): pair p is (p, p + R/2); angles [row*f, col*f, row*f, col*f] in R/4 blocks, i.e.
  `x*cos + rotate_half(x)*sin` with rotate_half(x) = cat(-x[R/2:], x[:R/2]).
- "interleaved" (Kimi-VL MoonViT): pair p is (2p, 2p+1) as a complex number; pair 2i turns by col*f_i, pair 2i+1
  by row*f_i.

The backward is the same kernel rotating by -phi, so autograd saves only `pos`. Positions restart per image for
free: they come from `vision_positions`, one (row, col) per token.
"""

from __future__ import annotations

import functools

import torch

from omni_mega.ops import _backend, _ext

LAYOUTS = ("half", "interleaved")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def rope_freqs(theta: float, rotary_dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """f_i = theta^(-4i/R) for i < R/4, computed in float64 and rounded once to `dtype` (what every kernel uses)."""
    i = torch.arange(0, rotary_dim // 4, dtype=torch.float64)
    return (theta ** (-(4.0 * i) / rotary_dim)).to(dtype)


def rope_2d_ref(
    x: torch.Tensor,
    pos: torch.Tensor,
    *,
    theta: float = 10000.0,
    layout: str = "half",
    rotary_dim: int | None = None,
    inverse: bool = False,
) -> torch.Tensor:
    """Plain-PyTorch oracle, written for clarity (same contract as `rope_2d`; builds [T, R/2] cos/sin tables)."""
    rotary_dim = _check(x, pos, theta, layout, rotary_dim)
    R, half = rotary_dim, rotary_dim // 2
    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    freqs = rope_freqs(theta, R, cdtype).to(x.device)  # [R/4]
    row = pos[:, 0:1].to(cdtype) * freqs  # [T, R/4]
    col = pos[:, 1:2].to(cdtype) * freqs
    if layout == "half":
        phi = torch.cat([row, col], dim=-1)  # pair p < R/4: row, else col
    else:
        phi = torch.stack([col, row], dim=-1).reshape(-1, half)  # pair 2i: col, 2i+1: row
    cos, sin = phi.cos()[:, None, :], phi.sin()[:, None, :]  # [T, 1, R/2]
    if inverse:
        sin = -sin
    xr = x[..., :R].to(cdtype)
    if layout == "half":
        a, b = xr[..., :half], xr[..., half:]
        rotated = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:
        a, b = xr[..., 0::2], xr[..., 1::2]
        rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([rotated.to(x.dtype), x[..., R:]], dim=-1)


def rope_2d(
    x: torch.Tensor,
    pos: torch.Tensor,
    *,
    theta: float = 10000.0,
    layout: str = "half",
    rotary_dim: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Rotates the first `rotary_dim` channels of every head of packed vision tokens by their 2D positions.

    Args:
        x: [T, H, D] THD, fp32/bf16/fp16 (fp64 too), D divisible by 4; any strides (views are fine).
        pos: int32 [T, 2] (row, col) of every token, as `vision_positions` returns; same device as x.
        theta: RoPE base.
        layout: "half" (Qwen2-VL / Ovis2.5) or "interleaved" (Kimi-VL); see the module docstring.
        rotary_dim: channels that rotate (multiple of 4, <= D; default D); the rest pass through.
        backend: "auto" (CUDA kernel on CUDA tensors, C++ on CPU) | "ref" | "cpp" | "cuda" | "triton".
    Returns:
        [T, H, D] contiguous, x's dtype and device. Differentiable in x (the backward is the inverse rotation).
    """
    which = _backend.resolve(backend, x.device, op="rope_2d", has_triton=True)
    if which == "ref":
        return rope_2d_ref(x, pos, theta=theta, layout=layout, rotary_dim=rotary_dim)
    if rotary_dim is None:  # a 0-d x has no D: the kernel's checks report it
        rotary_dim = x.size(-1) if x.dim() else 0
    if which == "triton":
        from omni_mega.ops.triton import rope_2d as tri

        return tri.rope_2d_triton(x, pos, theta=float(theta), layout=layout, rotary_dim=rotary_dim)
    return torch.ops.omni_mega.rope_2d(x, pos, float(theta), layout, rotary_dim, False)


def rope_2d_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    pos: torch.Tensor,
    *,
    theta: float = 10000.0,
    layout: str = "half",
    rotary_dim: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_2d` of q and k in one launch: each token's (cos, sin) are computed once for both (attention's call).

    Args:
        q: [T, Hq, D], k: [T, Hk, D] THD, same dtype/device/T/D; any strides (e.g. views into a fused qkv).
        pos, theta, layout, rotary_dim, backend: as in `rope_2d`.
    Returns:
        (q_rot [T, Hq, D], k_rot [T, Hk, D]), contiguous. Differentiable in q and k.
    """
    which = _backend.resolve(backend, q.device, op="rope_2d_qk", has_triton=True)
    if which == "ref":
        _check(q, pos, theta, layout, rotary_dim, k=k)
        kw = dict(theta=theta, layout=layout, rotary_dim=rotary_dim)
        return rope_2d_ref(q, pos, **kw), rope_2d_ref(k, pos, **kw)
    if rotary_dim is None:
        rotary_dim = q.size(-1) if q.dim() else 0
    if which == "triton":
        from omni_mega.ops.triton import rope_2d as tri

        return tri.rope_2d_qk_triton(q, k, pos, theta=float(theta), layout=layout, rotary_dim=rotary_dim)
    return torch.ops.omni_mega.rope_2d_qk(q, k, pos, float(theta), layout, rotary_dim, False)


def _check_x(x: torch.Tensor, name: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} must be 3-D [T, H, D] (THD), got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must have dtype Float/BFloat16/Half/Double, got {x.dtype}")
    if x.size(2) % 4:
        raise ValueError(
            f"{name} head dim D must be divisible by 4 (2 axes x (cos, sin) pairs), got D={x.size(2)} in shape "
            f"{tuple(x.shape)}"
        )


def _check(x, pos, theta, layout, rotary_dim, k=None) -> int:
    """Same rules and wording as csrc/rope_2d/rope_2d.h, so every backend fails the same way. Returns rotary_dim."""
    xn = "x" if k is None else "q"
    _check_x(x, xn)
    if pos.dim() != 2 or pos.size(1) != 2:
        raise ValueError(f"pos must have shape [T, 2] (row, col), got {tuple(pos.shape)}")
    if pos.dtype != torch.int32:
        raise ValueError(f"pos must have dtype Int, got {pos.dtype}")
    if pos.device != x.device:
        raise ValueError(f"{xn} and pos must be on the same device, got {x.device} and {pos.device}")
    if pos.size(0) != x.size(0):
        raise ValueError(
            f"pos must have one row per token: {xn} has T={x.size(0)} tokens (shape {tuple(x.shape)}) but pos has "
            f"shape {tuple(pos.shape)}"
        )
    if k is not None:
        _check_x(k, "k")
        if k.device != x.device:
            raise ValueError(f"q and k must be on the same device, got {x.device} and {k.device}")
        if k.dtype != x.dtype:
            raise ValueError(f"q and k must have the same dtype, got {x.dtype} and {k.dtype}")
        if k.size(0) != x.size(0) or k.size(2) != x.size(2):
            raise ValueError(f"q and k must have the same T and D, got shapes {tuple(x.shape)} and {tuple(k.shape)}")
    if not (theta > 0 and theta != float("inf")):
        raise ValueError(f"theta must be a positive finite number, got {theta}")
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be "half" or "interleaved", got "{layout}"')
    D = x.size(2)
    rotary_dim = D if rotary_dim is None else rotary_dim
    if not (4 <= rotary_dim <= D and rotary_dim % 4 == 0):
        raise ValueError(f"rotary_dim must be a multiple of 4 in [4, D={D}], got {rotary_dim}")
    return rotary_dim


# ---- dispatcher registrations for the C++/CUDA ops: fake tensors and autograd (backward = inverse rotation) ----


def _setup_one(ctx, inputs, output):
    _, pos, theta, layout, rotary_dim, inverse = inputs
    ctx.save_for_backward(pos)
    ctx.args = (theta, layout, rotary_dim, not inverse)


def _backward_one(ctx, grad):
    (pos,) = ctx.saved_tensors
    return torch.ops.omni_mega.rope_2d(grad, pos, *ctx.args), None, None, None, None, None


def _setup_qk(ctx, inputs, output):
    q, k, pos, theta, layout, rotary_dim, inverse = inputs
    ctx.save_for_backward(pos)
    ctx.args = (theta, layout, rotary_dim, not inverse)
    ctx.meta = [(q.shape, q.dtype, q.device), (k.shape, k.dtype, k.device)]


def _backward_qk(ctx, grad_q, grad_k):
    (pos,) = ctx.saved_tensors
    # An unused output may come back as None: its gradient is zero.
    gq, gk = [
        g if g is not None else torch.zeros(shape, dtype=dt, device=dev)
        for g, (shape, dt, dev) in zip((grad_q, grad_k), ctx.meta)
    ]
    dq, dk = torch.ops.omni_mega.rope_2d_qk(gq, gk, pos, *ctx.args)
    return dq, dk, None, None, None, None, None


@functools.cache
def _register() -> None:
    torch.library.register_fake("omni_mega::rope_2d")(
        lambda x, pos, theta, layout, rotary_dim, inverse: torch.empty_like(x, memory_format=torch.contiguous_format)
    )
    torch.library.register_fake("omni_mega::rope_2d_qk")(
        lambda q, k, pos, theta, layout, rotary_dim, inverse: (
            torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
        )
    )
    torch.library.register_autograd("omni_mega::rope_2d", _backward_one, setup_context=_setup_one)
    torch.library.register_autograd("omni_mega::rope_2d_qk", _backward_qk, setup_context=_setup_qk)


if _ext.has_cpu_extension():
    _register()
