// Visual Embedding Table (Ovis) ops: input validation shared by every backend, and the blockwise algorithm written
// once with ATen ops so the CPU file (at::parallel_for workers: row blocks in forward, V blocks in backward) and the
// CUDA file (cuBLAS matmuls on V-blocks, in stream order) run the same arithmetic.
//
// visual_head_vet: z = x @ W^T [N, Vt] (Vt = V - num_indicators), zh = (z - mean_v z) * rstd, y = zh * gamma + beta,
// p = softmax_v(y), out = p @ table[:Vt]. Nothing of size N x Vt is ever held: rows are processed in blocks of
// block_n, the vocabulary in blocks of block_v, so the working set is O(block_n * block_v).
//   forward  pass 1: per-row (mean, M2) of z, merged block by block (Chan et al.); no cancellation from sum/sumsq.
//            pass 2: y block by block with an online softmax (running max m, running sum s, running p @ table).
//            Saved per row: mean, rstd, lse = m + log s (all in the accumulation dtype).
//   backward (g = dL/dout, c = rowsum(g * out) = sum_v p_v dp_v):
//            pass 1: dp = g @ table^T, dy = p * (dp - c), dtable += p^T g, dgamma += sum_n dy zh, dbeta += sum_n dy,
//                    row sums a = mean_v(dy gamma), b = mean_v(dy gamma zh) (LayerNorm-over-V needs both first);
//            pass 2: dz = rstd * (dy gamma - a - zh b), dx += dz @ W, dW += dz^T x.
// Tensor parallelism (V split across ranks) hooks in between the passes: forward pass 1's per-row (count, mean, M2),
// the online-softmax partials (m, s, acc) and backward pass 1's row sums (a, b) merge across ranks exactly like
// across blocks (see omni_mega/ops/vet.py).
#pragma once

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
  TORCH_CHECK(table.size(0) == vt + num_indicators, "table must have shape [V, D] with V = ", vt_from, " + ",
              "num_indicators = ", vt, " + ", num_indicators, " = ", vt + num_indicators, " rows, got shape ",
              table.sizes());
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
  check_vet_table(table, logits.size(1), num_indicators, "logits.size(1)");
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

// Normalized logits of vocabulary block [v0, v0 + nb) for a row block: returns (zh, y) [rows, nb] in acc dtype.
struct HeadBlock {
  at::Tensor zh, y;
};
inline HeadBlock head_block(const at::Tensor& xr, const at::Tensor& w, const at::Tensor& gamma, const at::Tensor& beta,
                            const at::Tensor& mean_r, const at::Tensor& rstd_r, int64_t v0, int64_t nb) {
  at::Tensor z = mm_acc(xr, w.narrow(0, v0, nb).t(), mean_r.scalar_type());
  at::Tensor zh = z.sub_(mean_r.unsqueeze(1)).mul_(rstd_r.unsqueeze(1));
  at::Tensor y = at::addcmul(beta.narrow(0, v0, nb), zh, gamma.narrow(0, v0, nb));
  return {zh, y};
}

// Pass 1 of the head forward: mean and rstd over the vocabulary of z = xr @ W^T for one row block.
inline void head_row_stats(const at::Tensor& xr, const at::Tensor& w, double eps, int64_t bv, at::Tensor mean_r,
                           at::Tensor rstd_r) {
  const int64_t vt = w.size(0);
  at::Tensor mean = at::zeros_like(mean_r), m2 = at::zeros_like(mean_r);
  int64_t count = 0;
  for (int64_t v0 = 0; v0 < vt; v0 += bv) {
    const int64_t nb = std::min(bv, vt - v0);
    at::Tensor z = mm_acc(xr, w.narrow(0, v0, nb).t(), mean_r.scalar_type());
    at::Tensor bmean = z.mean(1);
    at::Tensor bm2 = (z - bmean.unsqueeze(1)).square_().sum(1);
    // Chan's merge of (count, mean, M2): exact, and robust when |mean| >> std (sum/sumsq is not).
    const int64_t total = count + nb;
    at::Tensor delta = bmean - mean;
    m2.add_(bm2).add_(delta.square() * (static_cast<double>(count) * nb / total));
    mean.add_(delta * (static_cast<double>(nb) / total));
    count = total;
  }
  mean_r.copy_(mean);
  rstd_r.copy_((m2 / static_cast<double>(vt) + eps).rsqrt_());
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

// Weight gradients, summed over row blocks (dw / dtable in acc dtype, or in the inputs' dtype when there is a single
// row block; dgamma / dbeta in acc dtype). Vocabulary blocks own disjoint rows of all four, so workers over V blocks
// never share them; dtable's indicator rows stay zero.
struct HeadGrads {
  at::Tensor dw, dgamma, dbeta, dtable;
};

// zh, p and dy = p * (dp - c) for one block, recomputed from the saved row statistics.
struct HeadBlockGrad {
  at::Tensor zh, p, dy;
};
inline HeadBlockGrad head_block_grad(const at::Tensor& xr, const at::Tensor& gr, const at::Tensor& w,
                                     const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& table,
                                     const at::Tensor& mean_r, const at::Tensor& rstd_r, const at::Tensor& lse_r,
                                     const at::Tensor& c_r, int64_t v0, int64_t nb) {
  HeadBlock hb = head_block(xr, w, gamma, beta, mean_r, rstd_r, v0, nb);
  at::Tensor p = hb.y.sub_(lse_r.unsqueeze(1)).exp_();
  at::Tensor dp = mm_acc(gr, table.narrow(0, v0, nb).t(), lse_r.scalar_type());
  at::Tensor dy = dp.sub_(c_r.unsqueeze(1)).mul_(p);
  return {hb.zh, p, dy};
}

// Inputs of one row block of the head backward (acc-dtype statistics, dtype-of-x tensors).
struct HeadRows {
  at::Tensor x, g, mean, rstd, lse, c;
};

// Pass 1 for one row block, workers over V blocks: dtable, dgamma, dbeta, and the LayerNorm row sums
// a = mean_v(dy gamma), b = mean_v(dy gamma zh) returned as [2, rows].
inline at::Tensor head_backward_pass1(const HeadRows& r, const at::Tensor& w, const at::Tensor& gamma,
                                      const at::Tensor& beta, const at::Tensor& table, int64_t bv, bool parallel,
                                      HeadGrads& grads) {
  const int64_t vt = w.size(0), rows = r.x.size(0);
  at::Tensor partial = at::zeros({2, num_blocks(vt, bv), rows}, r.c.options());  // per-V-block row sums
  vet_for(parallel, num_blocks(vt, bv), 1, rows * bv, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t v0 = blk * bv, nb = std::min(bv, vt - v0);
      HeadBlockGrad bg = head_block_grad(r.x, r.g, w, gamma, beta, table, r.mean, r.rstd, r.lse, r.c, v0, nb);
      addmm_acc_(grads.dtable.narrow(0, v0, nb), bg.p.to(r.x.scalar_type()).t(), r.g);
      grads.dgamma.narrow(0, v0, nb).add_((bg.dy * bg.zh).sum(0));
      grads.dbeta.narrow(0, v0, nb).add_(bg.dy.sum(0));
      at::Tensor dzh = bg.dy.mul_(gamma.narrow(0, v0, nb));
      partial[0][blk].copy_(dzh.sum(1));
      partial[1][blk].copy_(dzh.mul_(bg.zh).sum(1));
    }
  });
  return partial.sum(1).div_(static_cast<double>(vt));
}

// Pass 2 for one row block, workers over V blocks: dz = rstd * (dy gamma - a - zh b), dw += dz^T x, dx += dz @ W
// (dx summed over V blocks: one accumulator per worker, added up at the end).
inline void head_backward_pass2(const HeadRows& r, const at::Tensor& w, const at::Tensor& gamma,
                                const at::Tensor& beta, const at::Tensor& table, const at::Tensor& ab, int64_t bv,
                                bool parallel, at::Tensor dx_r, HeadGrads& grads) {
  const int64_t vt = w.size(0), rows = r.x.size(0);
  const auto dt = r.x.scalar_type();
  const int64_t slots = vet_slots(parallel);
  at::Tensor dx_slots =
      slots > 1 ? at::zeros({slots, dx_r.size(0), dx_r.size(1)}, dx_r.options()) : dx_r.unsqueeze(0);
  vet_for(parallel, num_blocks(vt, bv), 1, rows * bv, [&](int64_t b0, int64_t b1) {
    at::Tensor dx_acc = dx_slots[vet_slot(parallel)];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t v0 = blk * bv, nb = std::min(bv, vt - v0);
      HeadBlockGrad bg = head_block_grad(r.x, r.g, w, gamma, beta, table, r.mean, r.rstd, r.lse, r.c, v0, nb);
      at::Tensor dz = bg.dy.mul_(gamma.narrow(0, v0, nb)).sub_(ab[0].unsqueeze(1));
      dz = dz.sub_(bg.zh.mul_(ab[1].unsqueeze(1))).mul_(r.rstd.unsqueeze(1)).to(dt);
      addmm_acc_(dx_acc, dz, w.narrow(0, v0, nb));
      addmm_acc_(grads.dw.narrow(0, v0, nb), dz.t(), r.x);
    }
  });
  if (slots > 1) dx_r.copy_(dx_slots.sum(0));
}

// ------------------------------------------------------------------------------------------------------ full ops
// Forward: workers over row blocks (rows are independent). Backward: row blocks in order, workers over V blocks
// inside each (V blocks own disjoint weight-gradient rows).

// Returns (out [N, D] x.dtype, mean [N], rstd [N], lse [N]) with the statistics in vet_acc_type(x.dtype).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_forward(
    const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
    const at::Tensor& table_in, int64_t num_indicators, double eps, int64_t bn, int64_t bv, bool parallel) {
  check_vet_head_inputs(x_in, w_in, gamma_in, beta_in, table_in, num_indicators);
  TORCH_CHECK(eps > 0, "ln_eps must be > 0, got ", eps);
  const auto acc = vet_acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous(), table = table_in.contiguous();
  const at::Tensor gamma = gamma_in.to(acc).contiguous(), beta = beta_in.to(acc).contiguous();
  const int64_t n = x.size(0), vt = w.size(0);
  auto opts = x.options().dtype(acc);
  at::Tensor out = at::empty({n, table.size(1)}, opts), mean = at::empty({n}, opts), rstd = at::empty({n}, opts),
             lse = at::empty({n}, opts);
  vet_for(parallel, n, bn, vt, [&](int64_t n0, int64_t n1) {
    for (int64_t r0 = n0; r0 < n1; r0 += bn) {
      const int64_t rows = std::min(bn, n1 - r0);
      at::Tensor xr = x.narrow(0, r0, rows), mean_r = mean.narrow(0, r0, rows), rstd_r = rstd.narrow(0, r0, rows);
      head_row_stats(xr, w, eps, bv, mean_r, rstd_r);
      auto block_y = [&](int64_t v0, int64_t nb) { return head_block(xr, w, gamma, beta, mean_r, rstd_r, v0, nb).y; };
      online_softmax_table(rows, vt, bv, table, block_y, out.narrow(0, r0, rows), lse.narrow(0, r0, rows));
    }
  });
  return {out.to(x.scalar_type()), mean, rstd, lse};
}

// Returns (dx, dhead_weight, dln_weight, dln_bias, dtable), each in its input's dtype; dtable's indicator rows are 0.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_backward(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& gamma_in,
    const at::Tensor& beta_in, const at::Tensor& table_in, const at::Tensor& out, const at::Tensor& mean,
    const at::Tensor& rstd, const at::Tensor& lse, int64_t num_indicators, int64_t bn, int64_t bv, bool parallel) {
  check_vet_head_inputs(x_in, w_in, gamma_in, beta_in, table_in, num_indicators);
  const auto acc = vet_acc_type(x_in.scalar_type()), dt = x_in.scalar_type();
  const int64_t n = x_in.size(0), vt = w_in.size(0);
  TORCH_CHECK(out.size(0) == n, "out must have shape [", n, ", D], got ", out.sizes());
  check_grad_out(grad_in, out, table_in);
  check_row_stat(mean, "mean", n, acc, x_in);
  check_row_stat(rstd, "rstd", n, acc, x_in);
  check_row_stat(lse, "lse", n, acc, x_in);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous(), table = table_in.contiguous();
  const at::Tensor g = grad_in.to(dt).contiguous();
  const at::Tensor gamma = gamma_in.to(acc).contiguous(), beta = beta_in.to(acc).contiguous();
  // c_n = sum_v p_nv dp_nv = g_n . out_n: the softmax-backward row term, known before any block is visited.
  const at::Tensor c = (g.to(acc) * out.to(acc)).sum(1);
  auto opts = x.options().dtype(acc);
  // Each V block writes its rows of dw / dtable once per row block: with a single row block they are written in the
  // output dtype directly (no fp32 copies of the weights: 2.3 GB at the GPU shape), else accumulated in acc.
  auto wopts = bn >= n ? x.options() : opts;
  HeadGrads grads{at::zeros({vt, x.size(1)}, wopts), at::zeros({vt}, opts), at::zeros({vt}, opts),
                  at::zeros(table.sizes(), wopts)};
  at::Tensor dx = at::zeros({n, x.size(1)}, opts);
  for (int64_t r0 = 0; r0 < n; r0 += bn) {
    const int64_t rows = std::min(bn, n - r0);
    HeadRows r{x.narrow(0, r0, rows), g.narrow(0, r0, rows), mean.narrow(0, r0, rows), rstd.narrow(0, r0, rows),
               lse.narrow(0, r0, rows), c.narrow(0, r0, rows)};
    at::Tensor ab = head_backward_pass1(r, w, gamma, beta, table, bv, parallel, grads);
    head_backward_pass2(r, w, gamma, beta, table, ab, bv, parallel, dx.narrow(0, r0, rows), grads);
  }
  return {dx.to(dt), grads.dw.to(dt), grads.dgamma.to(gamma_in.scalar_type()), grads.dbeta.to(beta_in.scalar_type()),
          grads.dtable.to(table_in.scalar_type())};
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
