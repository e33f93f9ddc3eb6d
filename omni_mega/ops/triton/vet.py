"""Triton forward and backward of `visual_head_vet` (same saved statistics as csrc/vet/vet.h, so the two mix).

Still the two-pass algorithm (statistics pass + main pass forward, two recomputing passes backward); the C++/CUDA op
moved to one pass each way (LayerNorm statistics from W's moments, see csrc/vet/vet.h) and this file has not followed.

The logits GEMM z = x @ W_blk^T runs in Triton (tl.dot, bf16/fp16 inputs, fp32 accumulation) with the LayerNorm and
softmax arithmetic fused into its epilogue, so z never reaches memory:
  pass 1 (`_logits_tile_kernel`, STATS): per (row, 128-column tile) mean and M2 of z -> merged exactly (Chan) in
          PyTorch on [rows, V / 128] partials -> mean, rstd;
  pass 2 (`_logits_tile_kernel`, SOFTMAX): y = LN(z) tile, its row max and sum of exp -> y [rows, block_v] fp32
          scratch; `_exp_shift_kernel` writes e = exp(y - running max) in the table's dtype; cuBLAS e @ table_blk
          (D = 4096 is too wide to accumulate in registers, so that matmul stays a GEMM) with the online-softmax
          rescaling done on [rows] / [rows, D] tensors.
Backward (`_grad_tile_kernel`): the tile recomputes z = x @ W^T and dp = g @ table^T (two tl.dot loops) and fuses
p, dy = p * (dp - c) and the LayerNorm-over-V terms into the epilogue:
  pass 1: writes p (for cuBLAS dtable = p^T g), per-tile row sums of dzh and dzh * zh, per-row-tile column sums
          for dln_weight / dln_bias; the row sums give a, b;
  pass 2: writes dz = rstd * (dzh - a - zh * b); cuBLAS dx += dz @ W_blk, dW_blk += dz^T x.
The forward returns (out, mean, rstd, lse) exactly like the `omni_mega::vet_head_fwd` op (tested against it), so the
two implementations can be mixed; `_HeadTriton` (an autograd.Function) wires the Triton pair.

Not yet run on a GPU (developed with TRITON_INTERPRET=1 on CPU in fp32); tile sizes are untuned starting points.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from omni_mega.ops.vet import _check_head

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# (rows, columns, K) per program: 128 x 128 x 64 is the usual bf16 H100 GEMM tile; the interpreter needs >= 16 and
# is ~1000x slower, so it gets the smallest legal tiles.
_TILES = (16, 16, 16) if _INTERPRET else (128, 128, 64)
_STATS, _SOFTMAX = 0, 1
# Launch options for the GEMM-tile kernels on a GPU (8 warps for 128-row tiles; untuned); the interpreter ignores them.
_LAUNCH = {} if _INTERPRET else {"num_warps": 8, "num_stages": 3}


@triton.jit
def _logits_tile_kernel(x_ptr, w_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr, y_ptr, t0_ptr, t1_ptr,
                        rows, nb, K, ld_y, ld_t,
                        MODE: tl.constexpr, PREC: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                        BK: tl.constexpr):
    """One [BR, BC] tile of z = x @ W^T (x [rows, K], W [nb, K] contiguous) and its epilogue.

    STATS:   t0[r, tile] = mean of the tile's z columns, t1[r, tile] = their M2.
    SOFTMAX: y = (z - mean) * rstd * gamma + beta stored to y[r, c] (fp32, row stride ld_y);
             t0[r, tile] = max_c y, t1[r, tile] = sum_c exp(y - max).
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    r = pid_r * BR + tl.arange(0, BR)
    c = pid_c * BC + tl.arange(0, BC)
    rmask = r < rows
    cmask = c < nb
    r64 = r.to(tl.int64)
    c64 = c.to(tl.int64)
    acc = tl.zeros([BR, BC], dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < K
        a = tl.load(x_ptr + r64[:, None] * K + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(w_ptr + c64[None, :] * K + k[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    valid = rmask[:, None] & cmask[None, :]
    t_off = r64 * ld_t + pid_c
    if MODE == 0:
        count = tl.sum(cmask.to(tl.float32), axis=0)
        z = tl.where(valid, acc, 0.0)
        mean_t = tl.sum(z, axis=1) / count
        d = tl.where(valid, acc - mean_t[:, None], 0.0)
        tl.store(t0_ptr + t_off, mean_t, mask=rmask)
        tl.store(t1_ptr + t_off, tl.sum(d * d, axis=1), mask=rmask)
    else:
        mean = tl.load(mean_ptr + r, mask=rmask, other=0.0)
        rstd = tl.load(rstd_ptr + r, mask=rmask, other=0.0)
        g = tl.load(gamma_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        bt = tl.load(beta_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        y = (acc - mean[:, None]) * rstd[:, None] * g[None, :] + bt[None, :]
        y = tl.where(cmask[None, :], y, float("-inf"))
        m_t = tl.max(y, axis=1)
        s_t = tl.sum(tl.exp(y - m_t[:, None]), axis=1)
        tl.store(y_ptr + r64[:, None] * ld_y + c64[None, :], y, mask=valid)
        tl.store(t0_ptr + t_off, m_t, mask=rmask)
        tl.store(t1_ptr + t_off, s_t, mask=rmask)


@triton.jit
def _exp_shift_kernel(y_ptr, m_ptr, e_ptr, rows, nb, ld, BR: tl.constexpr, BC: tl.constexpr):
    """e[r, c] = exp(y[r, c] - m[r]) in e's dtype (y fp32, e same row stride ld)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    valid = (r < rows)[:, None] & (c < nb)[None, :]
    off = r.to(tl.int64)[:, None] * ld + c[None, :]
    y = tl.load(y_ptr + off, mask=valid, other=0.0)
    m = tl.load(m_ptr + r, mask=r < rows, other=0.0)
    tl.store(e_ptr + off, tl.exp(y - m[:, None]).to(e_ptr.dtype.element_ty), mask=valid)


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result; bf16/fp16 on CUDA keep fp32 out of the GEMM (mm.dtype) when torch has it."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass
    return torch.mm(a, b).float()


def _row_stats(xr, w, eps, bv, tiles, prec):
    """Pass 1: mean and rstd over the vocabulary of z = xr @ w^T, each [rows] fp32."""
    rows, vt = xr.shape[0], w.shape[0]
    br, bc, bk = tiles
    n_tiles = [triton.cdiv(min(bv, vt - v0), bc) for v0 in range(0, vt, bv)]
    means = torch.empty(rows, sum(n_tiles), device=xr.device, dtype=torch.float32)
    m2s = torch.empty_like(means)
    # Valid columns of every tile (the last tile of a block may be partial): built on the host, copied once.
    sizes = [min(bc, min(bv, vt - v0) - i * bc) for v0, nt in zip(range(0, vt, bv), n_tiles) for i in range(nt)]
    counts = torch.tensor(sizes, dtype=torch.float32).to(xr.device)
    col = 0
    for v0, nt in zip(range(0, vt, bv), n_tiles):
        nb = min(bv, vt - v0)
        _logits_tile_kernel[(triton.cdiv(rows, br), nt)](
            xr, w[v0:v0 + nb], xr, xr, xr, xr, xr, means[:, col:], m2s[:, col:], rows, nb, xr.shape[1], 0,
            means.stride(0), MODE=_STATS, PREC=prec, BR=br, BC=bc, BK=bk, **_LAUNCH)
        col += nt
    mean = (means * counts).sum(1) / vt
    m2 = m2s.sum(1) + ((means - mean[:, None]).square() * counts).sum(1)  # Chan: exact merge of the tile moments
    return mean, (m2 / vt + eps).rsqrt()


def _rows_forward(xr, w, gamma, beta, table, mean, rstd, bv, tiles, prec):
    """Pass 2: (out [rows, D] fp32, lse [rows] fp32) by an online softmax over vocabulary blocks."""
    rows, vt = xr.shape[0], w.shape[0]
    br, bc, bk = tiles
    dev = xr.device
    run_max = torch.full((rows,), float("-inf"), device=dev)
    run_sum = torch.zeros(rows, device=dev)
    acc = torch.zeros(rows, table.shape[1], device=dev)
    y = torch.empty(rows, min(bv, vt), device=dev)
    e = torch.empty(rows, min(bv, vt), device=dev, dtype=table.dtype)
    tmax = torch.empty(rows, triton.cdiv(min(bv, vt), bc), device=dev)
    tsum = torch.empty_like(tmax)
    for v0 in range(0, vt, bv):
        nb = min(bv, vt - v0)
        nt = triton.cdiv(nb, bc)
        _logits_tile_kernel[(triton.cdiv(rows, br), nt)](
            xr, w[v0:v0 + nb], mean, rstd, gamma[v0:v0 + nb], beta[v0:v0 + nb], y, tmax, tsum, rows, nb,
            xr.shape[1], y.stride(0), tmax.stride(0), MODE=_SOFTMAX, PREC=prec, BR=br, BC=bc, BK=bk, **_LAUNCH)
        bmax = tmax[:, :nt].amax(1)
        bsum = (tsum[:, :nt] * (tmax[:, :nt] - bmax[:, None]).exp()).sum(1)
        new_max = torch.maximum(run_max, bmax)
        _exp_shift_kernel[(triton.cdiv(rows, br), nt)](y, new_max, e, rows, nb, y.stride(0), BR=br, BC=bc)
        scale = (run_max - new_max).exp()  # 0 on the first block (run_max = -inf)
        run_sum = run_sum * scale + bsum * (bmax - new_max).exp()
        acc = acc * scale[:, None] + _mm_f32(e[:, :nb], table[v0:v0 + nb])
        run_max = new_max
    return acc / run_sum[:, None], run_max + run_sum.log()


def head_forward_triton(x, w, gamma, beta, table, num_indicators, eps, block_n=0, block_v=0):
    """(out [N, D] x.dtype, mean, rstd, lse [N] fp32): the contract of `omni_mega::vet_head_fwd`."""
    _check_head(x, w, gamma, beta, table, num_indicators, eps)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [N, d_in], got shape {tuple(x.shape)}")
    if x.dtype == torch.float64:
        raise ValueError("visual_head_vet(backend='triton') supports fp32/bf16/fp16 inputs, got torch.float64")
    x, w, table = x.contiguous(), w.contiguous(), table.contiguous()
    gamma, beta = gamma.contiguous(), beta.contiguous()
    n = x.shape[0]
    # <= 0 means the default, as in the C++ kernels (a negative step made range() empty: an unwritten output).
    bn = block_n if block_n > 0 else 8192
    bv = block_v if block_v > 0 else 4096
    prec = "ieee" if x.dtype == torch.float32 else None  # fp32 stays true fp32 (no TF32); bf16/fp16: tensor cores
    out = torch.empty(n, table.shape[1], device=x.device, dtype=torch.float32)
    mean, rstd, lse = (torch.empty(n, device=x.device) for _ in range(3))
    for r0 in range(0, n, bn):
        rs = slice(r0, min(n, r0 + bn))
        xr = x[rs]
        mean[rs], rstd[rs] = _row_stats(xr, w, eps, bv, _TILES, prec)
        out[rs], lse[rs] = _rows_forward(xr, w, gamma, beta, table, mean[rs], rstd[rs], bv, _TILES, prec)
    return out.to(x.dtype), mean, rstd, lse


# ------------------------------------------------------------------------------------------------------- backward
_PASS1, _PASS2 = 0, 1
# Two [BR, BC] fp32 accumulators live at once (z and dp): half-width column tiles on the GPU to bound registers.
_GRAD_TILES = (16, 16, 16) if _INTERPRET else (128, 64, 64)


@triton.jit
def _grad_tile_kernel(x_ptr, w_ptr, g_ptr, t_ptr, mean_ptr, rstd_ptr, lse_ptr, c_ptr, gamma_ptr, beta_ptr, a_ptr,
                      b_ptr, out_ptr, rs_ptr, cs_ptr, rows, nb, K, D, ld_out, ld_rs, rs_plane, ld_cs, cs_plane,
                      MODE: tl.constexpr, PREC: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    """One [BR, BC] tile of the head backward: z = x @ W^T and dp = g @ table^T (two tl.dot loops), then
    p = exp(LN(z) - lse), dy = p * (dp - c), dzh = dy * gamma.

    PASS1: out = p (x's dtype, for dtable = p^T g); rs[0|1, r, tile] = row sums of dzh and dzh * zh;
           cs[0|1, row_tile, c] = column sums of dy * zh (dgamma) and dy (dbeta).
    PASS2: out = dz = rstd * (dzh - a - zh * b) (x's dtype, for dx = dz @ W and dW = dz^T x).
    """
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    r = pid_r * BR + tl.arange(0, BR)
    c = pid_c * BC + tl.arange(0, BC)
    rmask = r < rows
    cmask = c < nb
    r64 = r.to(tl.int64)
    c64 = c.to(tl.int64)
    z = tl.zeros([BR, BC], dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < K
        a = tl.load(x_ptr + r64[:, None] * K + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(w_ptr + c64[None, :] * K + k[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        z = tl.dot(a, b, z, input_precision=PREC)
    dp = tl.zeros([BR, BC], dtype=tl.float32)
    for k0 in range(0, D, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < D
        a = tl.load(g_ptr + r64[:, None] * D + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(t_ptr + c64[None, :] * D + k[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        dp = tl.dot(a, b, dp, input_precision=PREC)
    valid = rmask[:, None] & cmask[None, :]
    mean = tl.load(mean_ptr + r, mask=rmask, other=0.0)
    rstd = tl.load(rstd_ptr + r, mask=rmask, other=0.0)
    lse = tl.load(lse_ptr + r, mask=rmask, other=0.0)
    cc = tl.load(c_ptr + r, mask=rmask, other=0.0)
    gam = tl.load(gamma_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    bet = tl.load(beta_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    zh = tl.where(valid, (z - mean[:, None]) * rstd[:, None], 0.0)
    p = tl.where(valid, tl.exp(zh * gam[None, :] + bet[None, :] - lse[:, None]), 0.0)
    dy = p * (dp - cc[:, None])
    dzh = dy * gam[None, :]
    out_off = r64[:, None] * ld_out + c64[None, :]
    if MODE == 0:
        tl.store(out_ptr + out_off, p.to(out_ptr.dtype.element_ty), mask=valid)
        rs_off = r64 * ld_rs + pid_c
        tl.store(rs_ptr + rs_off, tl.sum(dzh, axis=1), mask=rmask)
        tl.store(rs_ptr + rs_plane + rs_off, tl.sum(dzh * zh, axis=1), mask=rmask)
        cs_off = pid_r * ld_cs + c64
        tl.store(cs_ptr + cs_off, tl.sum(dy * zh, axis=0), mask=cmask)
        tl.store(cs_ptr + cs_plane + cs_off, tl.sum(dy, axis=0), mask=cmask)
    else:
        ra = tl.load(a_ptr + r, mask=rmask, other=0.0)
        rb = tl.load(b_ptr + r, mask=rmask, other=0.0)
        dz = rstd[:, None] * (dzh - ra[:, None] - zh * rb[:, None])
        tl.store(out_ptr + out_off, dz.to(out_ptr.dtype.element_ty), mask=valid)


def _acc_mm_(dst: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """dst += a @ b: in place when the dtypes agree, else through an fp32 product."""
    if dst.dtype == a.dtype:
        dst.addmm_(a, b)
    else:
        dst.add_(_mm_f32(a, b))


def _rows_backward(xr, gr, w, gamma, beta, table, mean, rstd, lse, c, bv, prec, dx_r, dw, dgamma, dbeta, dtable):
    """Both backward passes for one row block; accumulates into dx_r and the weight gradients."""
    rows, vt, d = xr.shape[0], w.shape[0], table.shape[1]
    br, bc, bk = _GRAD_TILES
    dev, width = xr.device, min(bv, vt)
    n_rt = triton.cdiv(rows, br)
    n_tiles = [triton.cdiv(min(bv, vt - v0), bc) for v0 in range(0, vt, bv)]
    rs = torch.empty(2, rows, sum(n_tiles), device=dev)
    cs = torch.empty(2, n_rt, width, device=dev)
    buf = torch.empty(rows, width, device=dev, dtype=xr.dtype)  # p in pass 1, dz in pass 2

    def launch(mode, v0, nb, rs_view, a=mean, b=mean):
        _grad_tile_kernel[(n_rt, triton.cdiv(nb, bc))](
            xr, w[v0:v0 + nb], gr, table[v0:v0 + nb], mean, rstd, lse, c, gamma[v0:v0 + nb], beta[v0:v0 + nb], a, b,
            buf, rs_view, cs, rows, nb, xr.shape[1], d, buf.stride(0), rs.stride(1), rs.stride(0), cs.stride(1),
            cs.stride(0), MODE=mode, PREC=prec, BR=br, BC=bc, BK=bk, **_LAUNCH)

    col = 0
    for v0, nt in zip(range(0, vt, bv), n_tiles):
        nb = min(bv, vt - v0)
        launch(_PASS1, v0, nb, rs[:, :, col:])
        col += nt
        _acc_mm_(dtable[v0:v0 + nb], buf[:, :nb].t(), gr)
        dgamma[v0:v0 + nb] += cs[0, :, :nb].sum(0)
        dbeta[v0:v0 + nb] += cs[1, :, :nb].sum(0)
    a, b = (rs.sum(2) / vt).unbind(0)
    for v0 in range(0, vt, bv):
        nb = min(bv, vt - v0)
        launch(_PASS2, v0, nb, rs, a.contiguous(), b.contiguous())
        _acc_mm_(dx_r, buf[:, :nb], w[v0:v0 + nb])
        _acc_mm_(dw[v0:v0 + nb], buf[:, :nb].t(), xr)


def head_backward_triton(grad, x, w, gamma, beta, table, out, mean, rstd, lse, num_indicators, block_n=0, block_v=0):
    """(dx, dhead_weight, dln_weight, dln_bias, dtable) in the inputs' dtype: the contract of `vet_head_bwd`."""
    dt = x.dtype
    x, w, table, gamma, beta = (t.contiguous() for t in (x, w, table, gamma, beta))
    g = grad.to(dt).contiguous()
    n, vt = x.shape[0], w.shape[0]
    bn, bv = (block_n if block_n > 0 else 16384), (block_v if block_v > 0 else 2048)
    prec = "ieee" if dt == torch.float32 else None
    c = (g.float() * out.float()).sum(1)  # sum_v p dp = g . out
    # One row block: every V block writes its dW / dtable rows once, so they are kept in the output dtype.
    wdt = dt if bn >= n else torch.float32
    dw = torch.zeros(vt, x.shape[1], device=x.device, dtype=wdt)
    dtable = torch.zeros(table.shape, device=x.device, dtype=wdt)
    dgamma, dbeta = torch.zeros(vt, device=x.device), torch.zeros(vt, device=x.device)
    dx = torch.zeros(n, x.shape[1], device=x.device)
    for r0 in range(0, n, bn):
        rs = slice(r0, min(n, r0 + bn))
        _rows_backward(x[rs], g[rs], w, gamma, beta, table, mean[rs], rstd[rs], lse[rs], c[rs], bv, prec, dx[rs], dw,
                       dgamma, dbeta, dtable)
    return dx.to(dt), dw.to(dt), dgamma.to(dt), dbeta.to(dt), dtable.to(dt)


class _HeadTriton(torch.autograd.Function):
    """Triton forward and backward on the saved per-row statistics (mean, rstd, lse)."""

    @staticmethod
    def forward(ctx, x, w, gamma, beta, table, num_indicators, eps, block_n, block_v):
        out, mean, rstd, lse = head_forward_triton(x, w, gamma, beta, table, num_indicators, eps, block_n, block_v)
        ctx.save_for_backward(x, w, gamma, beta, table, out, mean, rstd, lse)
        ctx.cfg = (num_indicators, block_n, block_v)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        num_indicators, block_n, block_v = ctx.cfg
        grads = head_backward_triton(grad_out, *ctx.saved_tensors, num_indicators, block_n, block_v)
        return (*grads, None, None, None, None)


def visual_head_vet_triton(x, w, gamma, beta, table, *, num_indicators=0, ln_eps=1e-5, block_n=0, block_v=0):
    """x [N, d_in] -> [N, D]; see `omni_mega.ops.visual_head_vet`."""
    return _HeadTriton.apply(x, w, gamma, beta, table, num_indicators, float(ln_eps), block_n, block_v)
