// CUDA kernel for vision_positions. The output size depends on grid values, so the small grid is read on the host
// (one D2H copy of N*3 ints) to plan offsets; the kernel then writes one token per thread.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "vision_positions/vision_positions.h"

namespace omni_mega {
namespace {

__global__ void vision_positions_kernel(const int32_t* __restrict__ cu, const int32_t* __restrict__ hw,
                                        int64_t frames, int64_t total, int32_t m, int2* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  // Binary search the frame holding token i: cu is sorted, frames are few (N*t).
  int64_t lo = 0, hi = frames - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= i) lo = mid; else hi = mid - 1;
  }
  int32_t row, col;
  token_position(static_cast<int32_t>(i - cu[lo]), hw[2 * lo + 1], m, &row, &col);
  out[i] = make_int2(row, col);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> vision_positions_cuda(const at::Tensor& grid_thw, int64_t merge_size) {
  TORCH_CHECK(grid_thw.is_cuda(), "vision_positions_cuda: grid_thw must be on CUDA, got ", grid_thw.device());
  c10::cuda::CUDAGuard guard(grid_thw.device());
  VisionPositionsPlan plan = plan_vision_positions(grid_thw, merge_size);
  const auto dev = grid_thw.device();
  at::Tensor cu = plan.cu_seqlens.to(dev, /*non_blocking=*/false);
  at::Tensor hw = plan.frame_hw.to(dev, /*non_blocking=*/false);
  at::Tensor pos = at::empty({plan.total_tokens, 2}, grid_thw.options().dtype(at::kInt));
  if (plan.total_tokens > 0) {
    constexpr int kThreads = 256;
    const int64_t blocks = (plan.total_tokens + kThreads - 1) / kThreads;
    auto stream = c10::cuda::getCurrentCUDAStream();
    vision_positions_kernel<<<blocks, kThreads, 0, stream>>>(
        cu.data_ptr<int32_t>(), hw.data_ptr<int32_t>(), plan.frame_hw.size(0), plan.total_tokens,
        static_cast<int32_t>(merge_size), reinterpret_cast<int2*>(pos.data_ptr<int32_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {pos, cu};
}

}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CUDA, m) { m.impl("vision_positions", &omni_mega::vision_positions_cuda); }
