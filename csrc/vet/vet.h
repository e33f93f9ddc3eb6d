// Visual Embedding Table (Ovis) ops: input validation shared by every backend, and the blockwise algorithm written
// once with ATen ops so the CPU file (at::parallel_for workers: row blocks in forward, V blocks in backward) and the
// CUDA file (cuBLAS matmuls on V-blocks, in stream order) run the same arithmetic.
//
// visual_head_vet: z = x @ W^T [N, Vt] (Vt = V - num_indicators), zh = (z - mean_v z) * rstd, y = zh * gamma + beta,
// p = softmax_v(y), out = p @ table[:Vt]. Nothing of size N x Vt is ever held: rows are processed in blocks of
// block_n, the vocabulary in blocks of block_v, so the working set is O(block_n * block_v).
//   forward:  per-row mean and variance of z from W's moments (wbar, C = cov of W's rows: d_in-sized, no pass over
//             the logits), then ONE pass over V: y block by block with an online softmax (running max m, running
//             sum s, running p @ table). Saved per row: mean, rstd, lse = m + log s (all in the accumulation dtype).
//   backward: ONE pass over V (g = dL/dout, c = rowsum(g * out)): each tile recomputes z and dp = g @ table^T, writes
//             dtable, dgamma, dbeta and accumulates the parts of dx and dW that do not need the LayerNorm's row sums
//             over V; the rest is added afterwards from d_in x d_in terms (derivation in the "head backward" section).
//   Matmuls over N x Vt: forward 2 (naive: 2), backward 5 (naive: 4; a fused path must recompute z and dp).
// Tensor parallelism (V split across ranks): W's moments (Chan-merge of per-rank (count, wbar, C)), the online-softmax
// partials (m, s, acc) and the backward's row sums (A, B) and u merge across ranks exactly like across blocks (see
// omni_mega/ops/vet.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>

#include "common/checks.h"

namespace omni_mega {

// ---------------------------------------------------------------------------------------------------- validation

inline void check_vet_float(const at::Tensor& t, const char* name) {
  check_dtype(t, name, {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf});
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name, " (",
              ref.scalar_type(), "), got ", t.scalar_type());
}

// table [V, D] with V = vt + num_indicators rows: the first vt are mixed by the softmax, the rest are indicators.
inline void check_vet_table(const at::Tensor& table, int64_t vt, int64_t num_indicators, const char* vt_from) {
  check_dim(table, "table", 2);
  TORCH_CHECK(num_indicators >= 0, "num_indicators must be >= 0, got ", num_indicators);
  TORCH_CHECK(vt >= 1, "the softmax needs V - num_indicators >= 1 entries (", vt_from, "), got ", vt);
  // Compared as table rows - vt: vt + num_indicators can pass int64 (num_indicators is a caller's integer).
  TORCH_CHECK(table.size(0) - vt == num_indicators, "table must have shape [V, D] with V = ", vt_from, " + ",
              "num_indicators = ", vt, " + ", num_indicators, " = ", unsigned_sum(vt, num_indicators),
              " rows, got shape ", table.sizes());
}

// x [N, d_in], head_weight [Vt, d_in], ln_weight [Vt], ln_bias [Vt], table [Vt + num_indicators, D]; one dtype and
// one device for all five.
inline void check_vet_head_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& gamma,
                                  const at::Tensor& beta, const at::Tensor& table, int64_t num_indicators) {
  check_dim(x, "x", 2);
  check_dim(w, "head_weight", 2);
  check_dim(gamma, "ln_weight", 1);
  check_dim(beta, "ln_bias", 1);
  check_vet_float(x, "x");
  check_same_dtype(w, "head_weight", x, "x");
  check_same_dtype(gamma, "ln_weight", x, "x");
  check_same_dtype(beta, "ln_bias", x, "x");
  check_same_dtype(table, "table", x, "x");
  check_same_device(w, "head_weight", x, "x");
  check_same_device(gamma, "ln_weight", x, "x");
  check_same_device(beta, "ln_bias", x, "x");
  check_same_device(table, "table", x, "x");
  TORCH_CHECK(w.size(1) == x.size(1), "head_weight must have shape [V - num_indicators, d_in] with d_in = x.size(1) = ",
              x.size(1), ", got shape ", w.sizes());
  const int64_t vt = w.size(0);
  TORCH_CHECK(gamma.size(0) == vt, "ln_weight must have shape [", vt, "] (head_weight.size(0)), got ", gamma.sizes());
  TORCH_CHECK(beta.size(0) == vt, "ln_bias must have shape [", vt, "] (head_weight.size(0)), got ", beta.sizes());
  check_vet_table(table, vt, num_indicators, "head_weight.size(0)");
}

// logits [N, Vt] (any float dtype), table [Vt + num_indicators, D] (any float dtype), same device.
inline void check_vet_embed_inputs(const at::Tensor& logits, const at::Tensor& table, int64_t num_indicators) {
  check_dim(logits, "logits", 2);
  check_vet_float(logits, "logits");
  check_vet_float(table, "table");
  check_same_device(table, "table", logits, "logits");
  check_vet_table(table, logits.size(1), num_indicators, "logits.size(-1)");  // the public op takes [..., V]
}

// A saved per-row statistic: [N] in the accumulation dtype, on the inputs' device.
inline void check_row_stat(const at::Tensor& t, const char* name, int64_t n, at::ScalarType acc, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must have shape [", n, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == acc, name, " must have dtype ", acc, ", got ", t.scalar_type());
  check_same_device(t, name, x, "x");
}

inline void check_grad_out(const at::Tensor& g, const at::Tensor& out, const at::Tensor& table) {
  const int64_t n = out.size(0), d = table.size(1);
  TORCH_CHECK(out.dim() == 2 && out.size(1) == d, "out must have shape [N, ", d, "], got ", out.sizes());
  TORCH_CHECK(g.dim() == 2 && g.size(0) == n && g.size(1) == d, "grad_out must have shape [", n, ", ", d, "], got ",
              g.sizes());
  check_same_device(g, "grad_out", table, "table");
}

// ------------------------------------------------------------------------------------------------- block helpers

// Softmax statistics and accumulators are fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 inputs.
inline at::ScalarType vet_acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline int64_t vet_block(int64_t requested, int64_t fallback) { return requested > 0 ? requested : fallback; }

// A block never larger than the axis it splits: one block covers it all either way, and a caller's INT64_MAX block
// made num_blocks' (n + b - 1) wrap negative, so no block ran and the output came back unwritten.
inline int64_t clamp_block(int64_t block, int64_t extent) { return std::min(block, std::max<int64_t>(extent, 1)); }

// a @ b in the inputs' dtype (tensor cores for bf16 on CUDA), result in `acc`.
inline at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc) { return at::mm(a, b).to(acc); }

// out += a @ b, out in the accumulation dtype; in place (no temporary) when the dtypes already agree.
inline void addmm_acc_(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) {
    out.addmm_(a, b);
  } else {
    out.add_(at::mm(a, b).to(out.scalar_type()));
  }
}

// Online softmax over vocabulary blocks: out_r = softmax(y) @ table[:vt], lse_r = logsumexp(y). `block_y(v0, nb)`
// returns y [rows, nb] in acc dtype. The unnormalized probabilities are cast to table's dtype for the matmul
// (Ovis: softmax in fp32, cast back); the running sums stay in acc dtype.
template <typename BlockY>
void online_softmax_table(int64_t rows, int64_t vt, int64_t bv, const at::Tensor& table, BlockY block_y,
                          at::Tensor out_r, at::Tensor lse_r) {
  at::Tensor run_max = at::full({rows}, -std::numeric_limits<double>::infinity(), lse_r.options());
  at::Tensor run_sum = at::zeros({rows}, lse_r.options());
  at::Tensor acc_out = at::zeros({rows, table.size(1)}, lse_r.options());
  for (int64_t v0 = 0; v0 < vt; v0 += bv) {
    const int64_t nb = std::min(bv, vt - v0);
    at::Tensor y = block_y(v0, nb);
    at::Tensor new_max = at::maximum(run_max, std::get<0>(y.max(1)));
    at::Tensor scale = (run_max - new_max).exp_();  // exp(-inf) = 0 on the first block
    at::Tensor e = y.sub_(new_max.unsqueeze(1)).exp_();
    run_sum.mul_(scale).add_(e.sum(1));
    acc_out.mul_(scale.unsqueeze(1));
    addmm_acc_(acc_out, e.to(table.scalar_type()), table.narrow(0, v0, nb));
    run_max = new_max;
  }
  out_r.copy_(acc_out.div_(run_sum.unsqueeze(1)));
  lse_r.copy_(run_max.add_(run_sum.log()));
}

// ------------------------------------------------------------------------------------------------ work spreading
// `parallel` (CPU): independent pieces run on at::parallel_for threads, each piece's ATen ops then single-threaded
// inside its thread (no per-op barriers: on 2 busy cores, per-op intra-op threading measured 300x slower on a
// 1024 x 1024 elementwise op than one thread). Not parallel (CUDA): the pieces run in order on the stream.

// Below ~64K logits per piece a thread's work is shorter than waking the pool (tests, gradcheck): keep it inline.
constexpr int64_t kVetMinParallelWork = 1 << 16;

// Runs fn over [0, n) in pieces of >= grain items; `item_work` (logits per item) sets a larger grain for small work.
inline void vet_for(bool parallel, int64_t n, int64_t grain, int64_t item_work,
                    const std::function<void(int64_t, int64_t)>& fn) {
  grain = std::max(grain, (kVetMinParallelWork + item_work - 1) / std::max<int64_t>(item_work, 1));
  if (!parallel || n <= grain) {
    for (int64_t i = 0; i < n; i += grain) fn(i, std::min(n, i + grain));
    return;
  }
  // Pieces are handed out one at a time (an atomic counter), not split statically: on shared cores a descheduled
  // thread then delays one piece instead of half the op.
  const int64_t pieces = (n + grain - 1) / grain;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(pieces, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    // Autograd state is thread-local and OpenMP workers start with grad mode on: without these guards the ATen ops
    // in a worker would record a graph (and keep blocks alive) whenever an input requires grad.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    c10::AutoGradMode no_grad(false);
    for (int64_t i = next++; i < pieces; i = next++) fn(i * grain, std::min(n, (i + 1) * grain));
  });
}

// Per-worker accumulators: one slot per thread on CPU, a single one on CUDA.
inline int64_t vet_slots(bool parallel) { return parallel ? at::get_num_threads() : 1; }
inline int64_t vet_slot(bool parallel) { return parallel ? at::get_thread_num() : 0; }

inline int64_t num_blocks(int64_t n, int64_t b) { return (n + b - 1) / b; }

// ------------------------------------------------------------------------------------------ vocabulary moments
// The LayerNorm over V needs per row only the mean and variance of z_v = x . w_v over v, and those are moments of
// W's rows: mean = x . wbar, var = x^T C x with C = Wc^T Wc / Vt, Wc = W - wbar (centred before the product, so C
// has no cancellation when |wbar| >> the spread of the rows). Cost Vt d_in^2 + N d_in^2 instead of a statistics
// pass over the N x Vt logits (N d_in Vt): the forward is one pass over V.

struct VocabMoments {
  at::Tensor wbar;  // [d_in] acc dtype
  at::Tensor cov;   // [d_in, d_in] acc dtype, C above
};

// Rows [v0, v0 + nb) of Wc = W - wbar, a fresh tensor in acc dtype.
inline at::Tensor centred_rows(const at::Tensor& w, const at::Tensor& wbar, int64_t v0, int64_t nb) {
  return at::sub(w.narrow(0, v0, nb).to(wbar.scalar_type()), wbar);
}

// wbar and C, blockwise over V (no full-size copy of W); C's products run in W's dtype (tensor cores for bf16).
inline VocabMoments vocab_moments(const at::Tensor& w, at::ScalarType acc, int64_t bv, bool parallel) {
  const int64_t vt = w.size(0), d_in = w.size(1);
  // wbar summed in fp64: an error delta in wbar only adds (x . delta)^2 to the variance and x . delta to the mean.
  at::Tensor wsum = at::zeros({d_in}, w.options().dtype(at::kDouble));
  for (int64_t v0 = 0; v0 < vt; v0 += bv) {
    wsum.add_(at::sum(w.narrow(0, v0, std::min(bv, vt - v0)), {0}, false, at::kDouble));
  }
  const at::Tensor wbar = wsum.div_(static_cast<double>(vt)).to(acc);
  at::Tensor cov = at::zeros({vet_slots(parallel), d_in, d_in}, w.options().dtype(acc));
  vet_for(parallel, num_blocks(vt, bv), 1, bv * d_in, [&](int64_t b0, int64_t b1) {
    at::Tensor cov_slot = cov[vet_slot(parallel)];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t v0 = blk * bv, nb = std::min(bv, vt - v0);
      const at::Tensor wc = centred_rows(w, wbar, v0, nb).to(w.scalar_type());
      addmm_acc_(cov_slot, wc.t(), wc);
    }
  });
  return {wbar, cov.sum(0).div_(static_cast<double>(vt))};
}

// Per-row mean and rstd over the vocabulary for the rows xr [rows, d_in], from the moments (no pass over V).
inline void head_row_stats(const at::Tensor& xr, const VocabMoments& mom, double eps, at::Tensor mean_r,
                           at::Tensor rstd_r) {
  const at::Tensor xa = xr.to(mom.wbar.scalar_type());
  mean_r.copy_(at::mv(xa, mom.wbar));
  // x^T C x >= 0 exactly; the clamp only removes rounding below zero when the variance is ~0.
  rstd_r.copy_(at::mm(xa, mom.cov).mul_(xa).sum(1).clamp_min_(0).add_(eps).rsqrt_());
}

// ------------------------------------------------------------------------------------------------ tile epilogues
// The elementwise work of a (row block, V block) tile between its matmuls. The ATen versions run on any device (one
// kernel per op); vet_cpu.cpp swaps in single-pass loops for fp32 tiles, since on CPU the ~12 ATen passes over each
// tile cost about as much as a matmul. Tiles are contiguous [rows, nb] in acc dtype; row vectors [rows], column
// vectors [nb], all contiguous and in acc dtype.
struct HeadEpilogue {
  // y = zh * gamma + beta - shift (shift: row vector, or undefined for 0); y may be zh. mx (if defined) = row max of y.
  std::function<void(const at::Tensor& zh, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& shift,
                     at::Tensor y, at::Tensor mx)>
      affine;
  // dy = p * (dp - c); dbeta += colsum(dy), dgamma += colsum(dy zh), a += rowsum(dy gamma),
  // b += rowsum(dy gamma zh); dp is overwritten with dy * gamma.
  std::function<void(const at::Tensor& p, at::Tensor dp, const at::Tensor& zh, const at::Tensor& c,
                     const at::Tensor& gamma, at::Tensor dgamma, at::Tensor dbeta, at::Tensor a, at::Tensor b)>
      dy;
};

inline HeadEpilogue aten_head_epilogue() {
  HeadEpilogue e;
  e.affine = [](const at::Tensor& zh, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& shift,
                at::Tensor y, at::Tensor mx) {
    at::addcmul_out(y, beta, zh, gamma);
    if (shift.defined()) y.sub_(shift.unsqueeze(1));
    if (mx.defined()) at::amax_out(mx, y, {1});
  };
  e.dy = [](const at::Tensor& p, at::Tensor dp, const at::Tensor& zh, const at::Tensor& c, const at::Tensor& gamma,
            at::Tensor dgamma, at::Tensor dbeta, at::Tensor a, at::Tensor b) {
    at::Tensor dy = dp.sub_(c.unsqueeze(1)).mul_(p);
    dbeta.add_(dy.sum(0));
    const at::Tensor dyzh = dy * zh;
    dgamma.add_(dyzh.sum(0));
    b.add_(at::mv(dyzh, gamma));
    a.add_(dy.mul_(gamma).sum(1));
  };
  return e;
}

// A contiguous [rows, cols] view of the start of a flat scratch buffer (tiles at the V tail are narrower).
inline at::Tensor tile_view(const at::Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

// buf = a @ b in buf's (acc) dtype: straight into buf when the dtypes agree, else through a temporary.
inline void mm_into(at::Tensor buf, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == buf.scalar_type()) {
    at::mm_out(buf, a, b);
  } else {
    buf.copy_(at::mm(a, b));
  }
}

// zh = xs @ w_blk^T + nmr into buf [rows, nb], with xs = rstd * x and nmr = -rstd * mean [rows, 1]: the row
// statistics ride on the matmul (its C operand) instead of two passes over the tile.
inline void zh_into(at::Tensor buf, const at::Tensor& xs, const at::Tensor& nmr, const at::Tensor& w_blk) {
  if (xs.scalar_type() == buf.scalar_type()) {
    at::addmm_out(buf, nmr, xs, w_blk.t());
  } else {
    buf.copy_(at::mm(xs, w_blk.t())).add_(nmr);
  }
}

// rstd * x in x's dtype and -rstd * mean as a column [rows, 1] (acc dtype), for zh_into.
inline std::pair<at::Tensor, at::Tensor> scaled_rows(const at::Tensor& x, const at::Tensor& mean,
                                                     const at::Tensor& rstd) {
  return {(x.to(rstd.scalar_type()) * rstd.unsqueeze(1)).to(x.scalar_type()), (mean * rstd).neg_().unsqueeze(1)};
}

// -------------------------------------------------------------------------------------------------- head forward

// Inputs of the head, contiguous; gamma and beta in acc dtype.
struct HeadIn {
  at::Tensor x, w, gamma, beta, table;
};

// One row block, one pass over V with an online softmax (running max m, running sum s, running e @ table).
inline void head_rows_forward(const HeadIn& in, const at::Tensor& xr, const at::Tensor& mean_r,
                              const at::Tensor& rstd_r, int64_t bv, const HeadEpilogue& epi, at::Tensor out_r,
                              at::Tensor lse_r) {
  const int64_t rows = xr.size(0), vt = in.w.size(0);
  const auto [xs, nmr] = scaled_rows(xr, mean_r, rstd_r);
  const at::Tensor flat = at::empty({rows * std::min(bv, vt)}, lse_r.options());
  at::Tensor run_max = at::full({rows}, -std::numeric_limits<double>::infinity(), lse_r.options());
  at::Tensor run_sum = at::zeros({rows}, lse_r.options()), mx = at::empty({rows}, lse_r.options());
  at::Tensor acc_out = out_r.zero_();  // out_r is in acc dtype
  for (int64_t v0 = 0; v0 < vt; v0 += bv) {
    const int64_t nb = std::min(bv, vt - v0);
    at::Tensor y = tile_view(flat, rows, nb);
    zh_into(y, xs, nmr, in.w.narrow(0, v0, nb));
    epi.affine(y, in.gamma.narrow(0, v0, nb), in.beta.narrow(0, v0, nb), at::Tensor(), y, mx);
    at::Tensor new_max = at::maximum(run_max, mx);
    at::Tensor scale = (run_max - new_max).exp_();  // exp(-inf) = 0 on the first block
    at::Tensor e = y.sub_(new_max.unsqueeze(1)).exp_();
    run_sum.mul_(scale).add_(e.sum(1));
    acc_out.mul_(scale.unsqueeze(1));
    addmm_acc_(acc_out, e.to(in.table.scalar_type()), in.table.narrow(0, v0, nb));
    run_max = new_max;
  }
  acc_out.div_(run_sum.unsqueeze(1));
  lse_r.copy_(run_max.add_(run_sum.log_()));
}

// ------------------------------------------------------------------------------------------------- head backward
// One pass over V. With zh = rstd (z - mean), y = gamma zh + beta, dy = p (dp - c) and the per-row sums over v
//   A = sum_v dy gamma,  B = sum_v dy gamma zh,
// the LayerNorm backward is dz_v = rstd (dy_v gamma_v - A / Vt - zh_v B / Vt). Everything that needs A and B (known
// only after the whole pass) is rebuilt afterwards from d_in-sized terms, using zh_v = rstd (w_v - wbar) . x and
// sum_v dz_v = 0:
//   dx   = sum_v dz_v (w_v - wbar) = rstd u - rstd^2 B (C x),        u = sum_v dy_v gamma_v (w_v - wbar)
//   dw_v = sum_n dz_nv x_n         = t_v - q - M (w_v - wbar),       t_v = sum_n dy_nv gamma_v rstd_n x_n,
//          q = sum_n rstd A x_n / Vt,  M = sum_n rstd^2 B x_n x_n^T / Vt   (d_in, d_in x d_in).
// So each tile does 5 matmuls (z, dp, dtable, u, t) in one pass instead of 7 over two recomputing passes.

// Saved state of the head backward: row statistics (acc dtype), c = rowsum(g * out), xs / nmr of scaled_rows.
struct HeadBwd {
  HeadIn in;
  at::Tensor g, lse, c, xs, nmr;
  VocabMoments mom;
};

// Weight gradients: dw (holding t until head_backward_finish) / dgamma / dbeta in acc dtype, dtable in table's
// dtype. Vocabulary blocks own disjoint rows of all four, so workers over V blocks never share them.
struct HeadGrads {
  at::Tensor dw, dgamma, dbeta, dtable;
};

// All rows against vocabulary block [v0, v0 + nb), in row blocks of bn: the block's rows of dtable, dgamma, dbeta
// and t (into dw); the block's share of the row sums ab = [A; B] [2, N] and of u [N, d_in] (the worker's slots).
// scratch: the worker's [3, >= min(bn, N) * nb] acc-dtype tiles (allocated once per worker, not per block).
inline void head_backward_vblock(const HeadBwd& s, int64_t v0, int64_t nb, int64_t bn, const HeadEpilogue& epi,
                                 HeadGrads& grads, at::Tensor ab, at::Tensor u, const at::Tensor& scratch) {
  const auto dt = s.in.x.scalar_type(), acc = s.c.scalar_type();
  const int64_t n = s.in.x.size(0);
  const at::Tensor wc = centred_rows(s.in.w, s.mom.wbar, v0, nb).to(dt), w_b = s.in.w.narrow(0, v0, nb);
  const at::Tensor gamma_b = s.in.gamma.narrow(0, v0, nb), beta_b = s.in.beta.narrow(0, v0, nb);
  const at::Tensor table_b = s.in.table.narrow(0, v0, nb);
  at::Tensor dtable_b = grads.dtable.narrow(0, v0, nb), dw_b = grads.dw.narrow(0, v0, nb);
  // dtable's block is final after the last row block: accumulate in acc dtype, write once in table's dtype.
  at::Tensor dtab = dtable_b.scalar_type() == acc ? dtable_b : at::zeros(dtable_b.sizes(), s.c.options());
  const at::Tensor zbuf = scratch[0], pbuf = scratch[1], dbuf = scratch[2];
  for (int64_t r0 = 0; r0 < n; r0 += bn) {
    const int64_t rows = std::min(bn, n - r0);
    const at::Tensor gr = s.g.narrow(0, r0, rows), xs_r = s.xs.narrow(0, r0, rows);
    at::Tensor zh = tile_view(zbuf, rows, nb), p = tile_view(pbuf, rows, nb), dp = tile_view(dbuf, rows, nb);
    zh_into(zh, xs_r, s.nmr.narrow(0, r0, rows), w_b);
    epi.affine(zh, gamma_b, beta_b, s.lse.narrow(0, r0, rows), p, at::Tensor());
    p.exp_();
    mm_into(dp, gr, table_b.t());
    addmm_acc_(dtab, p.to(dt).t(), gr);
    epi.dy(p, dp, zh, s.c.narrow(0, r0, rows), gamma_b, grads.dgamma.narrow(0, v0, nb),
           grads.dbeta.narrow(0, v0, nb), ab[0].narrow(0, r0, rows), ab[1].narrow(0, r0, rows));
    const at::Tensor dyg = dp.to(dt);  // dy * gamma
    addmm_acc_(u.narrow(0, r0, rows), dyg, wc);
    addmm_acc_(dw_b, dyg.t(), xs_r);
  }
  if (!dtab.is_same(dtable_b)) dtable_b.copy_(dtab);
}

// After the pass: dx = rstd u - rstd^2 B (C x) returned [N, d_in] acc; dw -= q + M (w_v - wbar) in place (workers
// over V blocks again, but each block is one [nb, d_in] x [d_in, d_in] product: Vt d_in^2, no N x Vt work).
inline at::Tensor head_backward_finish(const HeadBwd& s, const at::Tensor& rstd, const at::Tensor& ab, at::Tensor u,
                                       int64_t bv, bool parallel, HeadGrads& grads) {
  const auto dt = s.in.x.scalar_type(), acc = s.c.scalar_type();
  const int64_t vt = s.in.w.size(0), d_in = s.in.w.size(1);
  const at::Tensor xa = s.in.x.to(acc);
  const at::Tensor r2b = rstd.square().mul_(ab[1]);  // rstd^2 B, [N]
  at::Tensor dx = u.mul_(rstd.unsqueeze(1)).sub_(at::mm(xa, s.mom.cov).mul_(r2b.unsqueeze(1)));
  const at::Tensor q = at::mv(xa.t(), rstd * ab[0]).div_(static_cast<double>(vt));
  const at::Tensor m = at::mm(xa.t(), xa * r2b.div(static_cast<double>(vt)).unsqueeze(1)).to(dt);
  vet_for(parallel, num_blocks(vt, bv), 1, bv * d_in, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t v0 = blk * bv, nb = std::min(bv, vt - v0);
      const at::Tensor wc = centred_rows(s.in.w, s.mom.wbar, v0, nb).to(dt);
      grads.dw.narrow(0, v0, nb).sub_(q).sub_(mm_acc(wc, m, acc));
    }
  });
  return dx;
}

// ------------------------------------------------------------------------------------------------------ full ops
// Forward: workers over row blocks (rows are independent). Backward: workers over V blocks (they own disjoint
// weight-gradient rows; the per-row sums and u accumulate in one slot per worker).

inline HeadIn head_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& gamma, const at::Tensor& beta,
                          const at::Tensor& table, at::ScalarType acc) {
  return {x.contiguous(), w.contiguous(), gamma.to(acc).contiguous(), beta.to(acc).contiguous(), table.contiguous()};
}

// Returns (out [N, D] x.dtype, mean [N], rstd [N], lse [N]) with the statistics in vet_acc_type(x.dtype).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_forward(
    const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
    const at::Tensor& table_in, int64_t num_indicators, double eps, int64_t bn, int64_t bv, bool parallel,
    const HeadEpilogue& epi) {
  check_vet_head_inputs(x_in, w_in, gamma_in, beta_in, table_in, num_indicators);
  TORCH_CHECK(eps > 0, "ln_eps must be > 0, got ", eps);
  const auto acc = vet_acc_type(x_in.scalar_type());
  const HeadIn in = head_inputs(x_in, w_in, gamma_in, beta_in, table_in, acc);
  const int64_t n = in.x.size(0), vt = in.w.size(0);
  bn = clamp_block(bn, n), bv = clamp_block(bv, vt);
  auto opts = in.x.options().dtype(acc);
  at::Tensor out = at::empty({n, in.table.size(1)}, opts), mean = at::empty({n}, opts), rstd = at::empty({n}, opts),
             lse = at::empty({n}, opts);
  const VocabMoments mom = vocab_moments(in.w, acc, bv, parallel);
  vet_for(parallel, n, bn, vt, [&](int64_t n0, int64_t n1) {
    for (int64_t r0 = n0; r0 < n1; r0 += bn) {
      const int64_t rows = std::min(bn, n1 - r0);
      const at::Tensor xr = in.x.narrow(0, r0, rows), mean_r = mean.narrow(0, r0, rows);
      const at::Tensor rstd_r = rstd.narrow(0, r0, rows);
      head_row_stats(xr, mom, eps, mean_r, rstd_r);
      head_rows_forward(in, xr, mean_r, rstd_r, bv, epi, out.narrow(0, r0, rows), lse.narrow(0, r0, rows));
    }
  });
  return {out.to(in.x.scalar_type()), mean, rstd, lse};
}

// Returns (dx, dhead_weight, dln_weight, dln_bias, dtable), each in its input's dtype; dtable's indicator rows are 0.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_backward(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& gamma_in,
    const at::Tensor& beta_in, const at::Tensor& table_in, const at::Tensor& out, const at::Tensor& mean,
    const at::Tensor& rstd, const at::Tensor& lse, int64_t num_indicators, int64_t bn, int64_t bv, bool parallel,
    const HeadEpilogue& epi) {
  check_vet_head_inputs(x_in, w_in, gamma_in, beta_in, table_in, num_indicators);
  const auto acc = vet_acc_type(x_in.scalar_type()), dt = x_in.scalar_type();
  const int64_t n = x_in.size(0), vt = w_in.size(0), d_in = x_in.size(1);
  bn = clamp_block(bn, n), bv = clamp_block(bv, vt);
  TORCH_CHECK(out.size(0) == n, "out must have shape [", n, ", D], got ", out.sizes());
  check_grad_out(grad_in, out, table_in);
  check_row_stat(mean, "mean", n, acc, x_in);
  check_row_stat(rstd, "rstd", n, acc, x_in);
  check_row_stat(lse, "lse", n, acc, x_in);
  const HeadIn in = head_inputs(x_in, w_in, gamma_in, beta_in, table_in, acc);
  const at::Tensor g = grad_in.to(dt).contiguous();
  // c_n = sum_v p_nv dp_nv = g_n . out_n: the softmax-backward row term, known before any block is visited.
  const at::Tensor c = (g.to(acc) * out.to(acc)).sum(1);
  const auto [xs, nmr] = scaled_rows(in.x, mean, rstd);
  const HeadBwd s{in, g, lse.contiguous(), c, xs, nmr, vocab_moments(in.w, acc, bv, parallel)};
  auto opts = in.x.options().dtype(acc);
  // dw stays in acc dtype until its correction (an fp32 [Vt, d_in] buffer for bf16 inputs: rounding t to bf16 before
  // subtracting q + M w would cost the precision of the difference).
  HeadGrads grads{at::zeros({vt, d_in}, opts), at::zeros({vt}, opts), at::zeros({vt}, opts),
                  at::zeros(in.table.sizes(), in.table.options())};
  const int64_t slots = vet_slots(parallel);
  at::Tensor ab = at::zeros({slots, 2, n}, opts), u = at::zeros({slots, n, d_in}, opts);
  const at::Tensor scratch = at::empty({slots, 3, std::min(bn, n) * std::min(bv, vt)}, opts);
  vet_for(parallel, num_blocks(vt, bv), 1, n * bv, [&](int64_t b0, int64_t b1) {
    const int64_t slot = vet_slot(parallel);
    for (int64_t blk = b0; blk < b1; ++blk) {
      head_backward_vblock(s, blk * bv, std::min(bv, vt - blk * bv), bn, epi, grads, ab[slot], u[slot],
                           scratch[slot]);
    }
  });
  at::Tensor dx = head_backward_finish(s, rstd, ab.sum(0), u.sum(0), bv, parallel, grads);
  return {dx.to(dt), grads.dw.to(dt), grads.dgamma.to(gamma_in.scalar_type()), grads.dbeta.to(beta_in.scalar_type()),
          grads.dtable};
}

// A fresh acc-dtype copy of logits block [v0, v0 + nb): callers modify it in place.
inline at::Tensor logits_block(const at::Tensor& lr, int64_t v0, int64_t nb, at::ScalarType acc) {
  return lr.narrow(1, v0, nb).to(acc, /*non_blocking=*/false, /*copy=*/true);
}

// Returns (out [N, D] table.dtype, lse [N] acc dtype of logits).
inline std::tuple<at::Tensor, at::Tensor> vet_embed_forward(const at::Tensor& logits_in, const at::Tensor& table_in,
                                                            int64_t num_indicators, int64_t bn, int64_t bv,
                                                            bool parallel) {
  check_vet_embed_inputs(logits_in, table_in, num_indicators);
  const auto acc = vet_acc_type(logits_in.scalar_type());
  const at::Tensor logits = logits_in.contiguous(), table = table_in.contiguous();
  const int64_t n = logits.size(0), vt = logits.size(1);
  bn = clamp_block(bn, n), bv = clamp_block(bv, vt);
  auto opts = logits.options().dtype(acc);
  at::Tensor out = at::empty({n, table.size(1)}, opts), lse = at::empty({n}, opts);
  vet_for(parallel, n, bn, vt, [&](int64_t n0, int64_t n1) {
    for (int64_t r0 = n0; r0 < n1; r0 += bn) {
      const int64_t rows = std::min(bn, n1 - r0);
      at::Tensor lr = logits.narrow(0, r0, rows);
      auto block_y = [&](int64_t v0, int64_t nb) { return logits_block(lr, v0, nb, acc); };
      online_softmax_table(rows, vt, bv, table, block_y, out.narrow(0, r0, rows), lse.narrow(0, r0, rows));
    }
  });
  return {out.to(table.scalar_type()), lse};
}

// Returns (dlogits [N, Vt] logits.dtype, dtable [V, D] table.dtype with zero indicator rows). One pass: workers over
// V blocks own disjoint columns of dlogits and rows of dtable.
inline std::tuple<at::Tensor, at::Tensor> vet_embed_backward(const at::Tensor& grad_in, const at::Tensor& logits_in,
                                                             const at::Tensor& table_in, const at::Tensor& out,
                                                             const at::Tensor& lse, int64_t num_indicators, int64_t bn,
                                                             int64_t bv, bool parallel) {
  check_vet_embed_inputs(logits_in, table_in, num_indicators);
  const auto acc = vet_acc_type(logits_in.scalar_type()), tdt = table_in.scalar_type();
  const int64_t n = logits_in.size(0), vt = logits_in.size(1);
  bn = clamp_block(bn, n), bv = clamp_block(bv, vt);
  TORCH_CHECK(out.size(0) == n, "out must have shape [", n, ", D], got ", out.sizes());
  check_grad_out(grad_in, out, table_in);
  check_row_stat(lse, "lse", n, acc, logits_in);
  const at::Tensor logits = logits_in.contiguous(), table = table_in.contiguous(), g = grad_in.to(tdt).contiguous();
  const at::Tensor c = (g.to(acc) * out.to(acc)).sum(1);
  at::Tensor dlogits = at::empty({n, vt}, logits.options());
  at::Tensor dtable = at::zeros(table.sizes(), bn >= n ? table.options() : table.options().dtype(acc));
  for (int64_t r0 = 0; r0 < n; r0 += bn) {
    const int64_t rows = std::min(bn, n - r0);
    at::Tensor lr = logits.narrow(0, r0, rows), gr = g.narrow(0, r0, rows);
    at::Tensor lse_r = lse.narrow(0, r0, rows), c_r = c.narrow(0, r0, rows);
    vet_for(parallel, num_blocks(vt, bv), 1, rows * bv, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t v0 = blk * bv, nb = std::min(bv, vt - v0);
        at::Tensor p = logits_block(lr, v0, nb, acc).sub_(lse_r.unsqueeze(1)).exp_();
        at::Tensor dp = mm_acc(gr, table.narrow(0, v0, nb).t(), acc);
        dlogits.narrow(0, r0, rows).narrow(1, v0, nb).copy_(dp.sub_(c_r.unsqueeze(1)).mul_(p));
        addmm_acc_(dtable.narrow(0, v0, nb), p.to(tdt).t(), gr);
      }
    });
  }
  return {dlogits, dtable.to(tdt)};
}

}  // namespace omni_mega
