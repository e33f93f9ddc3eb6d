"""Triton kernel for `rope_2d` / `rope_2d_qk` (same math as omni_mega/ops/rope_2d.py's docstring).

A program takes BLOCK_T tokens: it computes their R/2 (cos, sin) pairs once in fp32 registers, then loops over every
head of q (and k), so the sincos is shared by all heads and no [T, D] table exists. Inputs may be strided views;
outputs are contiguous. Registered with `torch.library.triton_op` so `torch.compile` sees the kernel.

On CPU this runs only under TRITON_INTERPRET=1 (set before this module is imported), fp32/fp64 only.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from omni_mega.ops.rope_2d import _check, rope_freqs

try:  # accurate sin/cos on the GPU (tl.sin/tl.cos may lower to approximate instructions)
    from triton.language.extra import libdevice
except Exception:  # pragma: no cover - very old triton
    libdevice = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _rotate_heads(x_ptr, y_ptr, t, tmask, st, sh, sd, cos, sin, a_off, b_off, pmask, pt, ptmask,
                  H: tl.constexpr, D: tl.constexpr, R: tl.constexpr):
    t64 = t.to(tl.int64)
    m2 = tmask[:, None] & pmask[None, :]
    mp = tmask[:, None] & ptmask[None, :]
    for h in range(H):
        xrow = x_ptr + t64[:, None] * st + h * sh
        yrow = y_ptr + (t64[:, None] * H + h) * D
        xa = tl.load(xrow + a_off[None, :] * sd, mask=m2, other=0.0).to(tl.float32)
        xb = tl.load(xrow + b_off[None, :] * sd, mask=m2, other=0.0).to(tl.float32)
        ya = xa * cos - xb * sin
        yb = xb * cos + xa * sin
        tl.store(yrow + a_off[None, :], ya.to(y_ptr.dtype.element_ty), mask=m2)
        tl.store(yrow + b_off[None, :], yb.to(y_ptr.dtype.element_ty), mask=m2)
        if D > R:  # channels R..D-1 pass through
            v = tl.load(xrow + pt[None, :] * sd, mask=mp, other=0.0)
            tl.store(yrow + pt[None, :], v, mask=mp)


@triton.jit
def _rope_2d_kernel(q_ptr, k_ptr, yq_ptr, yk_ptr, pos_ptr, freq_ptr, T,
                    sqt, sqh, sqd, skt, skh, skd,
                    HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr, R: tl.constexpr,
                    INTERLEAVED: tl.constexpr, INVERSE: tl.constexpr, ACCURATE: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_PT: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = t < T
    p = tl.arange(0, BLOCK_P)  # pair index, R/2 pairs
    pmask = p < R // 2
    if INTERLEAVED:  # pair p = channels (2p, 2p+1); even p turns by col, odd p by row
        axis = 1 - (p % 2)
        fidx = p // 2
        a_off = 2 * p
        b_off = 2 * p + 1
    else:  # pair p = channels (p, p + R/2); p < R/4 turns by row, else by col
        axis = (p >= R // 4).to(tl.int32)
        fidx = tl.where(p < R // 4, p, p - R // 4)
        a_off = p
        b_off = p + R // 2
    freq = tl.load(freq_ptr + fidx, mask=pmask, other=0.0)
    m2 = tmask[:, None] & pmask[None, :]
    pv = tl.load(pos_ptr + t.to(tl.int64)[:, None] * 2 + axis[None, :], mask=m2, other=0)
    phi = pv.to(tl.float32) * freq[None, :]
    if ACCURATE:
        cos = libdevice.cos(phi)
        sin = libdevice.sin(phi)
    else:
        cos = tl.cos(phi)
        sin = tl.sin(phi)
    if INVERSE:
        sin = -sin
    pt = R + tl.arange(0, BLOCK_PT)
    ptmask = pt < D
    _rotate_heads(q_ptr, yq_ptr, t, tmask, sqt, sqh, sqd, cos, sin, a_off, b_off, pmask, pt, ptmask, HQ, D, R)
    _rotate_heads(k_ptr, yk_ptr, t, tmask, skt, skh, skd, cos, sin, a_off, b_off, pmask, pt, ptmask, HK, D, R)


@functools.lru_cache(maxsize=64)
def _freq_table(theta: float, rotary_dim: int, device: torch.device) -> torch.Tensor:
    # fp32 f_i rounded once from fp64, cached: R/4 floats, no per-call host->device copy.
    return rope_freqs(theta, rotary_dim, torch.float32).to(device)


def _launch(q, k, yq, yk, pos, freq, layout: str, rotary_dim: int, inverse: bool) -> None:
    T, HQ, D = q.shape
    HK = k.shape[1] if k is not None else 0
    k_, yk_ = (k, yk) if k is not None else (q, yq)
    BLOCK_T = 16 if not _INTERPRET else 4
    grid = (triton.cdiv(T, BLOCK_T),)
    wrap_triton(_rope_2d_kernel)[grid](
        q, k_, yq, yk_, pos, freq, T,
        q.stride(0), q.stride(1), q.stride(2), k_.stride(0), k_.stride(1), k_.stride(2),
        HQ=HQ, HK=HK, D=D, R=rotary_dim, INTERLEAVED=layout == "interleaved", INVERSE=inverse,
        ACCURATE=(not _INTERPRET) and libdevice is not None,
        BLOCK_T=BLOCK_T, BLOCK_P=triton.next_power_of_2(rotary_dim // 2),
        BLOCK_PT=triton.next_power_of_2(max(D - rotary_dim, 1)),
    )


@triton_op("omni_mega::rope_2d_triton", mutates_args=())
def _rope_2d_op(x: torch.Tensor, pos: torch.Tensor, freq: torch.Tensor, layout: str, rotary_dim: int,
                inverse: bool) -> torch.Tensor:
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.shape[0] > 0:
        _launch(x, None, y, None, pos, freq, layout, rotary_dim, inverse)
    return y


@triton_op("omni_mega::rope_2d_qk_triton", mutates_args=())
def _rope_2d_qk_op(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, freq: torch.Tensor, layout: str,
                   rotary_dim: int, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    yq = torch.empty_like(q, memory_format=torch.contiguous_format)
    yk = torch.empty_like(k, memory_format=torch.contiguous_format)
    if q.shape[0] > 0:
        _launch(q, k, yq, yk, pos, freq, layout, rotary_dim, inverse)
    return yq, yk


def _setup(ctx, inputs, output):
    # pos and the R/4-float frequency table (a function of theta and R, not of the data); no activations.
    ctx.save_for_backward(inputs[-5], inputs[-4])
    ctx.args = (inputs[-3], inputs[-2], not inputs[-1])
    ctx.meta = [(t.shape, t.dtype, t.device) for t in inputs[:-5]]


def _backward_one(ctx, grad):
    pos, freq = ctx.saved_tensors
    return _rope_2d_op(grad, pos, freq, *ctx.args), None, None, None, None, None


def _backward_qk(ctx, grad_q, grad_k):
    pos, freq = ctx.saved_tensors
    # An unused output may come back as None: its gradient is zero.
    gq, gk = [
        g if g is not None else torch.zeros(shape, dtype=dt, device=dev)
        for g, (shape, dt, dev) in zip((grad_q, grad_k), ctx.meta)
    ]
    dq, dk = _rope_2d_qk_op(gq, gk, pos, freq, *ctx.args)
    return dq, dk, None, None, None, None, None


_rope_2d_op.register_autograd(_backward_one, setup_context=_setup)
_rope_2d_qk_op.register_autograd(_backward_qk, setup_context=_setup)


def _check_triton_dtype(x: torch.Tensor) -> None:
    # The kernel computes in fp32: an fp64 input would silently lose precision.
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"rope_2d (Triton): x must have dtype Float/BFloat16/Half, got {x.dtype}")


def rope_2d_triton(x, pos, *, theta: float = 10000.0, layout: str = "half", rotary_dim: int | None = None):
    """Triton `rope_2d`: x [T, H, D] any strides, pos int32 [T, 2] -> [T, H, D] contiguous (see `rope_2d`)."""
    rotary_dim = _check(x, pos, theta, layout, rotary_dim)
    _check_triton_dtype(x)
    freq = _freq_table(float(theta), rotary_dim, x.device)
    return _rope_2d_op(x, pos.contiguous(), freq, layout, rotary_dim, False)


def rope_2d_qk_triton(q, k, pos, *, theta: float = 10000.0, layout: str = "half", rotary_dim: int | None = None):
    """Triton `rope_2d_qk`: q [T, Hq, D], k [T, Hk, D] any strides -> (q_rot, k_rot) contiguous."""
    rotary_dim = _check(q, pos, theta, layout, rotary_dim, k=k)
    _check_triton_dtype(q)
    freq = _freq_table(float(theta), rotary_dim, q.device)
    return _rope_2d_qk_op(q, k, pos.contiguous(), freq, layout, rotary_dim, False)
