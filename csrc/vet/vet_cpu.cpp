// C++ CPU backend of the vet ops: the blockwise algorithm of vet.h with at::parallel_for workers (forward: row blocks;
// backward: vocabulary blocks), each worker's ATen matmuls single-threaded on its block, and the fp32 tile epilogues
// as single-pass loops.
#include <torch/library.h>

#include <limits>

#include "vet/vet.h"

namespace omni_mega {
namespace {

// y = zh * gamma + beta - shift and the row max of y, one pass per row (see HeadEpilogue::affine).
template <typename T>
void affine_rows(const at::Tensor& zh, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& shift,
                 at::Tensor y, at::Tensor mx) {
  const int64_t rows = zh.size(0), nb = zh.size(1);
  const T* __restrict__ g = gamma.data_ptr<T>();
  const T* __restrict__ b = beta.data_ptr<T>();
  for (int64_t i = 0; i < rows; ++i) {
    const T* z = zh.data_ptr<T>() + i * nb;  // may alias yr (in place)
    T* yr = y.data_ptr<T>() + i * nb;
    const T sh = shift.defined() ? shift.data_ptr<T>()[i] : T(0);
    T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < nb; ++j) {
      const T v = z[j] * g[j] + b[j] - sh;
      yr[j] = v;
      m = v > m ? v : m;
    }
    if (mx.defined()) mx.data_ptr<T>()[i] = m;
  }
}

// dy = p (dp - c), the four reductions and dp := dy * gamma, one pass per row (see HeadEpilogue::dy).
template <typename T>
void dy_rows(const at::Tensor& p, at::Tensor dp, const at::Tensor& zh, const at::Tensor& c, const at::Tensor& gamma,
             at::Tensor dgamma, at::Tensor dbeta, at::Tensor a, at::Tensor b) {
  const int64_t rows = p.size(0), nb = p.size(1);
  const T* __restrict__ g = gamma.data_ptr<T>();
  T* __restrict__ dg = dgamma.data_ptr<T>();
  T* __restrict__ db = dbeta.data_ptr<T>();
  for (int64_t i = 0; i < rows; ++i) {
    const T* __restrict__ pr = p.data_ptr<T>() + i * nb;
    const T* __restrict__ zr = zh.data_ptr<T>() + i * nb;
    T* __restrict__ dr = dp.data_ptr<T>() + i * nb;
    const T ci = c.data_ptr<T>()[i];
    T sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
    for (int64_t j = 0; j < nb; ++j) {
      const T d = pr[j] * (dr[j] - ci);
      const T dz = d * zr[j];
      db[j] += d;
      dg[j] += dz;
      sa += d * g[j];
      sb += dz * g[j];
      dr[j] = d * g[j];
    }
    a.data_ptr<T>()[i] += sa;
    b.data_ptr<T>()[i] += sb;
  }
}

// The CPU epilogues: the fused loops for fp32 tiles (fp32, bf16 and fp16 inputs). fp64 tiles (fp64 inputs: tests,
// gradcheck) take vet.h's ATen epilogues, the ones the CUDA backend runs, so the CPU test suite covers both.
const HeadEpilogue& cpu_head_epilogue() {
  static const HeadEpilogue epi = [] {
    HeadEpilogue e, aten = aten_head_epilogue();
    e.affine = [aten](const at::Tensor& zh, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& shift,
                      at::Tensor y, at::Tensor mx) {
      if (zh.scalar_type() != at::kFloat) return aten.affine(zh, gamma, beta, shift, y, mx);
      affine_rows<float>(zh, gamma, beta, shift, y, mx);
    };
    e.dy = [aten](const at::Tensor& p, at::Tensor dp, const at::Tensor& zh, const at::Tensor& c,
                  const at::Tensor& gamma, at::Tensor dgamma, at::Tensor dbeta, at::Tensor a, at::Tensor b) {
      if (p.scalar_type() != at::kFloat) return aten.dy(p, dp, zh, c, gamma, dgamma, dbeta, a, b);
      dy_rows<float>(p, dp, zh, c, gamma, dgamma, dbeta, a, b);
    };
    return e;
  }();
  return epi;
}

// Working set per thread ~ a few [block_n, block_v] fp32 temporaries: 128 x 1024 x 4 B = 512 KiB each, about L2.
constexpr int64_t kCpuBlockN = 128;
constexpr int64_t kCpuBlockV = 1024;
// Backward: threads own V blocks and walk all rows in blocks of block_n; each keeps 3 scratch tiles
// (256 x 512 x 4 B = 512 KiB each) and an [N, d_in] fp32 accumulator for the dx part u. Tile shapes from 128 x 512 to
// 1024 x 512 measured the same (~75 GFLOP/s per core on the dev machine's matmuls, within the noise of shared cores).
constexpr int64_t kCpuBwdBlockN = 256;
constexpr int64_t kCpuBwdBlockV = 512;

void check_cpu(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_fwd_cpu(const at::Tensor& x, const at::Tensor& w,
                                                                            const at::Tensor& gamma,
                                                                            const at::Tensor& beta,
                                                                            const at::Tensor& table, int64_t num_ind,
                                                                            double eps, int64_t block_n,
                                                                            int64_t block_v) {
  check_cpu(x, "vet_head_fwd");
  return vet_head_forward(x, w, gamma, beta, table, num_ind, eps, vet_block(block_n, kCpuBlockN),
                          vet_block(block_v, kCpuBlockV), /*parallel=*/true, cpu_head_epilogue());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& table, const at::Tensor& out, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& lse, int64_t num_ind, int64_t block_n, int64_t block_v) {
  check_cpu(x, "vet_head_bwd");
  return vet_head_backward(grad, x, w, gamma, beta, table, out, mean, rstd, lse, num_ind,
                           vet_block(block_n, kCpuBwdBlockN), vet_block(block_v, kCpuBwdBlockV), /*parallel=*/true,
                           cpu_head_epilogue());
}

std::tuple<at::Tensor, at::Tensor> vet_embed_fwd_cpu(const at::Tensor& logits, const at::Tensor& table,
                                                     int64_t num_ind, int64_t block_n, int64_t block_v) {
  check_cpu(logits, "vet_embed_fwd");
  return vet_embed_forward(logits, table, num_ind, vet_block(block_n, kCpuBlockN), vet_block(block_v, kCpuBlockV),
                           /*parallel=*/true);
}

std::tuple<at::Tensor, at::Tensor> vet_embed_bwd_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                                     const at::Tensor& table, const at::Tensor& out,
                                                     const at::Tensor& lse, int64_t num_ind, int64_t block_n,
                                                     int64_t block_v) {
  check_cpu(logits, "vet_embed_bwd");
  return vet_embed_backward(grad, logits, table, out, lse, num_ind, vet_block(block_n, kCpuBwdBlockN),
                            vet_block(block_v, kCpuBwdBlockV), /*parallel=*/true);
}

}  // namespace
}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CPU, m) {
  m.impl("vet_head_fwd", &omni_mega::vet_head_fwd_cpu);
  m.impl("vet_head_bwd", &omni_mega::vet_head_bwd_cpu);
  m.impl("vet_embed_fwd", &omni_mega::vet_embed_fwd_cpu);
  m.impl("vet_embed_bwd", &omni_mega::vet_embed_bwd_cpu);
}
