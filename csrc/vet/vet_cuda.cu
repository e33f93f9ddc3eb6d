// CUDA backend of the vet ops: the blockwise algorithm of vet.h on the current stream, its matmuls on cuBLAS (tensor
// cores for bf16/fp16 inputs, fp32 accumulation inside each GEMM; softmax statistics and cross-block accumulators in
// fp32). Blocks run in stream order: one block's GEMMs already fill the GPU.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "vet/vet.h"

namespace omni_mega {
namespace {

// Temporaries are [block_n, block_v] fp32: 16384 x 2048 x 4 B = 128 MiB each, a handful live at once (the backward
// keeps 3 scratch tiles), well under the naive path's N x V tensors at the benchmark's shape (N 16,384, V 65,536: 4 GiB per fp32 copy); the
// GEMMs per block (16384 x 2048 x d_in) are large enough to run near tensor-core peak. For bf16 inputs the backward
// also holds dhead_weight in fp32 until its LayerNorm correction ([V, d_in] fp32: 1.2 GB at V = 65,536,
// d_in = 4,608) and u = the dx accumulator ([N, d_in] fp32: 0.3 GB). Not yet run on a GPU.
constexpr int64_t kCudaBlockN = 16384;
constexpr int64_t kCudaBlockV = 2048;

void check_cuda(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.is_cuda(), op, ": expected CUDA tensors, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_fwd_cuda(
    const at::Tensor& x, const at::Tensor& w, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& table,
    int64_t num_ind, double eps, int64_t block_n, int64_t block_v) {
  check_cuda(x, "vet_head_fwd");
  c10::cuda::CUDAGuard guard(x.device());
  return vet_head_forward(x, w, gamma, beta, table, num_ind, eps, vet_block(block_n, kCudaBlockN),
                          vet_block(block_v, kCudaBlockV), /*parallel=*/false, aten_head_epilogue());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vet_head_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& table, const at::Tensor& out, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& lse, int64_t num_ind, int64_t block_n, int64_t block_v) {
  check_cuda(x, "vet_head_bwd");
  c10::cuda::CUDAGuard guard(x.device());
  return vet_head_backward(grad, x, w, gamma, beta, table, out, mean, rstd, lse, num_ind,
                           vet_block(block_n, kCudaBlockN), vet_block(block_v, kCudaBlockV), /*parallel=*/false,
                           aten_head_epilogue());
}

std::tuple<at::Tensor, at::Tensor> vet_embed_fwd_cuda(const at::Tensor& logits, const at::Tensor& table,
                                                      int64_t num_ind, int64_t block_n, int64_t block_v) {
  check_cuda(logits, "vet_embed_fwd");
  c10::cuda::CUDAGuard guard(logits.device());
  return vet_embed_forward(logits, table, num_ind, vet_block(block_n, kCudaBlockN), vet_block(block_v, kCudaBlockV),
                           /*parallel=*/false);
}

std::tuple<at::Tensor, at::Tensor> vet_embed_bwd_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                                      const at::Tensor& table, const at::Tensor& out,
                                                      const at::Tensor& lse, int64_t num_ind, int64_t block_n,
                                                      int64_t block_v) {
  check_cuda(logits, "vet_embed_bwd");
  c10::cuda::CUDAGuard guard(logits.device());
  return vet_embed_backward(grad, logits, table, out, lse, num_ind, vet_block(block_n, kCudaBlockN),
                            vet_block(block_v, kCudaBlockV), /*parallel=*/false);
}

}  // namespace
}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CUDA, m) {
  m.impl("vet_head_fwd", &omni_mega::vet_head_fwd_cuda);
  m.impl("vet_head_bwd", &omni_mega::vet_head_bwd_cuda);
  m.impl("vet_embed_fwd", &omni_mega::vet_embed_fwd_cuda);
  m.impl("vet_embed_bwd", &omni_mega::vet_embed_bwd_cuda);
}
