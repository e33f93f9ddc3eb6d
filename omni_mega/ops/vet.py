"""`vet`: Ovis's Visual Embedding Table, probabilistic visual tokens embedded without an N x V tensor.

Ovis maps each visual feature to a distribution over a visual vocabulary of V entries and embeds it as the expected
row of the table: p = softmax(LayerNorm_V(x @ W_head^T)) over the first Vt = V - n_ind entries (softmax in fp32,
cast back), e = p @ table[:Vt]; the n_ind indicator tokens are hard rows table[Vt + i] (`vet_indicator`).

The kernels (csrc/vet/vet.h, one ATen-level algorithm for CPU and CUDA) walk the vocabulary in blocks with running
statistics and recompute blocks in backward, so memory is O(block_n * block_v) instead of O(N * V), and each
direction is ONE pass over V:
  forward:  the LayerNorm's per-row mean and variance come from W's moments (mean = x . wbar, var = x^T C x with
            C = (W - wbar)^T (W - wbar) / V, d_in x d_in), then an online softmax fused with p @ table;
  backward: one recomputing pass gives dtable, dln_weight, dln_bias, the LayerNorm row sums A = sum_v dy gamma,
            B = sum_v dy gamma zh and the parts of dx / dhead_weight that do not need them; the rest is added from
            d_in-sized terms after the pass (derivation in vet.h, "head backward").
  Matmuls over N x V: forward 2 (naive 2), backward 5 (naive 4: the fused path must recompute the logits).

Tensor-parallel form (V split across TP ranks; `models.vision.visual_tokenizer` takes a plain-PyTorch path for
tp > 1 today): every cross-V reduction is a merge of per-block partials, so a rank's slice is merged with other
ranks' exactly like another block:
  moments  -> all-gather per-rank (count, wbar_r, C_r) and merge them (Chan's formula for covariances);
  forward  -> all-reduce MAX of the rank's running max m_r, then all-reduce SUM of s_r * exp(m_r - m) and
              of acc_r * exp(m_r - m) (acc_r = the rank's unnormalized p @ table, [N, D]);
  backward -> c = rowsum(g * out) needs nothing; all-reduce SUM of the row sums (A, B) and of u (the dx part, [N, d_in])
              after the pass; dhead_weight, dln_*, dtable stay local to the rank's V slice.
The C++ pieces (`vocab_moments`, `head_rows_forward`, `head_backward_vblock`, `head_backward_finish` in
csrc/vet/vet.h) are those steps; the TP version exposes them as separate ops and puts the collectives between them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omni_mega.ops import _backend, _ext

__all__ = ["vet_embed", "vet_embed_ref", "visual_head_vet", "visual_head_vet_ref", "vet_indicator"]

_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ------------------------------------------------------------------------------------------------------ references


def vet_embed_ref(logits: torch.Tensor, table: torch.Tensor, *, num_indicators: int = 0) -> torch.Tensor:
    """Ovis's formula in plain PyTorch (materializes [N, V]): same contract as `vet_embed`."""
    _check_embed(logits, table, num_indicators)
    # Softmax in fp32 (fp64 for the oracle), cast back; indicator columns padded with exact zeros; the full table.
    p = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(table.dtype)
    p = F.pad(p, (0, num_indicators))
    return p @ table


def visual_head_vet_ref(
    x: torch.Tensor,
    head_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    table: torch.Tensor,
    *,
    num_indicators: int = 0,
    ln_eps: float = 1e-5,
) -> torch.Tensor:
    """Ovis's visual head in plain PyTorch (bias-free Linear -> LayerNorm over V -> softmax -> table)."""
    _check_head(x, head_weight, ln_weight, ln_bias, table, num_indicators, ln_eps)
    logits = F.linear(x, head_weight)
    logits = F.layer_norm(logits, (head_weight.shape[0],), ln_weight, ln_bias, ln_eps)
    return vet_embed_ref(logits, table, num_indicators=num_indicators)


# ----------------------------------------------------------------------------------------------------- public API


def vet_embed(
    logits: torch.Tensor,
    table: torch.Tensor,
    *,
    num_indicators: int = 0,
    backend: str = "auto",
    block_n: int = 0,
    block_v: int = 0,
) -> torch.Tensor:
    """Expected table row under softmax(logits), without materializing the probabilities.

    Args:
        logits: float [..., V - num_indicators] (fp32/fp64/bf16/fp16); the softmax runs in fp32 (fp64 for fp64).
        table: float [V, D], the Visual Embedding Table; the last `num_indicators` rows get zero mass.
        num_indicators: indicator tokens at the end of the table (Ovis's image/tile boundary markers).
        backend: "auto" | "ref" | "cpp" | "cuda".
        block_n, block_v: row / vocabulary block of the kernels (0: the device default).
    Returns:
        [..., D] in table's dtype; differentiable in logits and table.
    """
    which = _backend.resolve(backend, logits.device, op="vet_embed")
    if which == "ref":
        return vet_embed_ref(logits, table, num_indicators=num_indicators)
    lead = logits.shape[:-1]
    # Only [..., V] is flattened; a 0-d tensor goes to the kernel as it is and its checks report it.
    flat = logits.reshape(-1, logits.shape[-1]) if logits.dim() not in (0, 2) else logits
    out, _ = torch.ops.omni_mega.vet_embed_fwd(flat, table, num_indicators, block_n, block_v)
    return out.reshape(*lead, table.shape[-1])


def visual_head_vet(
    x: torch.Tensor,
    head_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    table: torch.Tensor,
    *,
    num_indicators: int = 0,
    ln_eps: float = 1e-5,
    backend: str = "auto",
    block_n: int = 0,
    block_v: int = 0,
) -> torch.Tensor:
    """Ovis's whole visual head fused: softmax(LayerNorm_V(x @ head_weight^T)) @ table[:V - num_indicators].

    Never holds an [N, V] tensor (blockwise over V with running statistics; backward recomputes blocks).

    Args:
        x: float [..., d_in] visual features (fp32/fp64/bf16/fp16).
        head_weight: [V - num_indicators, d_in], the bias-free Linear's weight; x's dtype and device.
        ln_weight, ln_bias: [V - num_indicators], LayerNorm over the vocabulary axis; x's dtype.
        table: [V, D], the Visual Embedding Table; x's dtype.
        num_indicators: indicator rows at the end of the table (get zero mass).
        ln_eps: LayerNorm epsilon.
        backend: "auto" (C++ on CPU, CUDA on GPU) | "ref" | "cpp" | "cuda" | "triton" (fused Triton GEMM tiles,
            forward and backward; forced only until it has been verified on a GPU).
        block_n, block_v: row / vocabulary block of the kernels (0: the device default).
    Returns:
        [..., D] in x's dtype; differentiable in x, head_weight, ln_weight, ln_bias and table.
    """
    # "auto" never picks Triton yet: its kernels have only run in the CPU interpreter (see ops/triton/vet.py).
    which = _backend.resolve(backend, x.device, op="visual_head_vet", has_triton=True)
    if which == "ref":
        return visual_head_vet_ref(
            x, head_weight, ln_weight, ln_bias, table, num_indicators=num_indicators, ln_eps=ln_eps
        )
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1]) if x.dim() not in (0, 2) else x
    if which == "triton":
        from omni_mega.ops.triton import vet as tri

        out = tri.visual_head_vet_triton(flat, head_weight, ln_weight, ln_bias, table, num_indicators=num_indicators,
                                         ln_eps=ln_eps, block_n=block_n, block_v=block_v)
    else:
        out = torch.ops.omni_mega.vet_head_fwd(
            flat, head_weight, ln_weight, ln_bias, table, num_indicators, float(ln_eps), block_n, block_v
        )[0]
    return out.reshape(*lead, table.shape[-1])


def vet_indicator(ids: torch.Tensor, table: torch.Tensor, num_indicators: int) -> torch.Tensor:
    """Embeddings of indicator tokens: rows table[V - num_indicators + ids].

    Args:
        ids: int32/int64 [...] with values in [0, num_indicators).
        table: float [V, D].
    Returns:
        [..., D] in table's dtype (differentiable in table).
    """
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must have dtype Int/Long, got {ids.dtype}")
    if table.dim() != 2:
        raise ValueError(f"table must be 2-D [V, D], got shape {tuple(table.shape)}")
    if not 0 < num_indicators <= table.shape[0]:
        raise ValueError(f"num_indicators must be in [1, V={table.shape[0]}], got {num_indicators}")
    if ids.device != table.device:
        raise ValueError(f"ids and table must be on the same device, got {ids.device} and {table.device}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_indicators):
        raise ValueError(
            f"ids must lie in [0, {num_indicators}), got min {int(ids.min())} max {int(ids.max())}"
        )
    return table[table.shape[0] - num_indicators + ids.long()]


# ------------------------------------------------------------------------------------------------------ validation
# Same rules and wording as csrc/vet/vet.h, so the reference fails like the kernels.


def _check_table(table: torch.Tensor, vt: int, num_indicators: int, vt_from: str) -> None:
    if table.dim() != 2:
        raise ValueError(f"table must be 2-D, got shape {tuple(table.shape)}")
    if num_indicators < 0:
        raise ValueError(f"num_indicators must be >= 0, got {num_indicators}")
    if vt < 1:
        raise ValueError(f"the softmax needs V - num_indicators >= 1 entries ({vt_from}), got {vt}")
    if table.shape[0] != vt + num_indicators:
        raise ValueError(
            f"table must have shape [V, D] with V = {vt_from} + num_indicators = {vt} + {num_indicators} = "
            f"{vt + num_indicators} rows, got shape {tuple(table.shape)}"
        )


def _check_embed(logits: torch.Tensor, table: torch.Tensor, num_indicators: int) -> None:
    for name, t in (("logits", logits), ("table", table)):
        if t.dtype not in _FLOATS:
            raise ValueError(f"{name} must have dtype Float/Double/BFloat16/Half, got {t.dtype}")
    if logits.dim() < 1:
        raise ValueError(f"logits must be [..., V - num_indicators], got shape {tuple(logits.shape)}")
    if table.device != logits.device:
        raise ValueError(f"table and logits must be on the same device, got {table.device} and {logits.device}")
    _check_table(table, logits.shape[-1], num_indicators, "logits.size(-1)")


def _check_head(x, head_weight, ln_weight, ln_bias, table, num_indicators, ln_eps) -> None:
    if x.dtype not in _FLOATS:
        raise ValueError(f"x must have dtype Float/Double/BFloat16/Half, got {x.dtype}")
    named = (("head_weight", head_weight, 2), ("ln_weight", ln_weight, 1), ("ln_bias", ln_bias, 1), ("table", table, 2))
    for name, t, dim in named:
        if t.dim() != dim:
            raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} and x must be on the same device, got {t.device} and {x.device}")
    if head_weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"head_weight must have shape [V - num_indicators, d_in] with d_in = x.size(-1) = {x.shape[-1]}, "
            f"got shape {tuple(head_weight.shape)}"
        )
    vt = head_weight.shape[0]
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t.shape[0] != vt:
            raise ValueError(f"{name} must have shape [{vt}] (head_weight.size(0)), got {tuple(t.shape)}")
    _check_table(table, vt, num_indicators, "head_weight.size(0)")
    if not ln_eps > 0:
        raise ValueError(f"ln_eps must be > 0, got {ln_eps}")


# ------------------------------------------------------------------------------------- fake tensors and autograd


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _head_setup_context(ctx, inputs, output):
    x, w, gamma, beta, table, num_indicators, _eps, block_n, block_v = inputs
    out, mean, rstd, lse = output
    ctx.save_for_backward(x, w, gamma, beta, table, out, mean, rstd, lse)
    ctx.cfg = (num_indicators, block_n, block_v)
    ctx.mark_non_differentiable(mean, rstd, lse)


def _head_backward(ctx, grad_out, _g_mean, _g_rstd, _g_lse):
    x, w, gamma, beta, table, out, mean, rstd, lse = ctx.saved_tensors
    num_indicators, block_n, block_v = ctx.cfg
    grads = torch.ops.omni_mega.vet_head_bwd(
        grad_out, x, w, gamma, beta, table, out, mean, rstd, lse, num_indicators, block_n, block_v
    )
    return (*grads, None, None, None, None)


def _embed_setup_context(ctx, inputs, output):
    logits, table, num_indicators, block_n, block_v = inputs
    out, lse = output
    ctx.save_for_backward(logits, table, out, lse)
    ctx.cfg = (num_indicators, block_n, block_v)
    ctx.mark_non_differentiable(lse)


def _embed_backward(ctx, grad_out, _g_lse):
    logits, table, out, lse = ctx.saved_tensors
    num_indicators, block_n, block_v = ctx.cfg
    dlogits, dtable = torch.ops.omni_mega.vet_embed_bwd(
        grad_out, logits, table, out, lse, num_indicators, block_n, block_v
    )
    return dlogits, dtable, None, None, None


if _ext.has_cpu_extension():

    @torch.library.register_fake("omni_mega::vet_head_fwd")
    def _vet_head_fwd_fake(x, w, gamma, beta, table, num_indicators, ln_eps, block_n, block_v):
        _check_head(x, w, gamma, beta, table, num_indicators, ln_eps)
        n, acc = x.shape[0], _acc(x.dtype)
        stats = [x.new_empty((n,), dtype=acc) for _ in range(3)]
        return (x.new_empty((n, table.shape[1])), *stats)

    @torch.library.register_fake("omni_mega::vet_head_bwd")
    def _vet_head_bwd_fake(grad, x, w, gamma, beta, table, out, mean, rstd, lse, num_indicators, block_n, block_v):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, w, gamma, beta, table))

    @torch.library.register_fake("omni_mega::vet_embed_fwd")
    def _vet_embed_fwd_fake(logits, table, num_indicators, block_n, block_v):
        _check_embed(logits, table, num_indicators)
        n = logits.shape[0]
        out = logits.new_empty((n, table.shape[1]), dtype=table.dtype)
        return out, logits.new_empty((n,), dtype=_acc(logits.dtype))

    @torch.library.register_fake("omni_mega::vet_embed_bwd")
    def _vet_embed_bwd_fake(grad, logits, table, out, lse, num_indicators, block_n, block_v):
        return (torch.empty_like(logits, memory_format=torch.contiguous_format),
                torch.empty_like(table, memory_format=torch.contiguous_format))

    torch.library.register_autograd("omni_mega::vet_head_fwd", _head_backward, setup_context=_head_setup_context)
    torch.library.register_autograd("omni_mega::vet_embed_fwd", _embed_backward, setup_context=_embed_setup_context)
