// C++ CPU backend of the vet ops: the blockwise algorithm of vet.h with at::parallel_for workers (forward: row blocks;
// backward: vocabulary blocks), each worker's ATen matmuls single-threaded on its block.
#include <torch/library.h>

#include "vet/vet.h"

namespace omni_mega {
namespace {

// Working set per thread ~ a few [block_n, block_v] fp32 temporaries: 128 x 1024 x 4 B = 512 KiB each, about L2.
constexpr int64_t kCpuBlockN = 128;
constexpr int64_t kCpuBlockV = 1024;
// Backward: threads split the V blocks of one row block, so a row block should hold many V blocks; each thread keeps
// a [block_n, d_in] dx accumulator.
constexpr int64_t kCpuBwdBlockN = 512;
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
                          vet_block(block_v, kCpuBlockV), /*parallel=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& table, const at::Tensor& out, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& lse, int64_t num_ind, int64_t block_n, int64_t block_v) {
  check_cpu(x, "vet_head_bwd");
  // Backward rows run in order: a larger row block gives ATen's threaded matmuls more work per call.
  return vet_head_backward(grad, x, w, gamma, beta, table, out, mean, rstd, lse, num_ind,
                           vet_block(block_n, kCpuBwdBlockN), vet_block(block_v, kCpuBwdBlockV), /*parallel=*/true);
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
