// Shared host-side planning for vision_positions: validates grid_thw and builds the per-frame offsets that both
// the CPU and CUDA kernels consume.
#pragma once

#include "common/checks.h"

namespace omni_mega {

struct VisionPositionsPlan {
  at::Tensor grid;        // int64 [N, 3] on CPU, contiguous
  at::Tensor cu_seqlens;  // int32 [F + 1] on CPU, F = sum_i t_i frames
  at::Tensor frame_hw;    // int32 [F, 2] (h, w) of every frame, on CPU
  int64_t total_tokens = 0;
};

inline VisionPositionsPlan plan_vision_positions(const at::Tensor& grid_thw, int64_t merge_size) {
  check_grid_thw(grid_thw);
  VisionPositionsPlan plan;
  plan.grid = grid_thw.to(at::kCPU, at::kLong).contiguous();
  plan.total_tokens = validate_grid_values(plan.grid, merge_size);
  const int64_t* g = plan.grid.data_ptr<int64_t>();
  int64_t frames = 0;
  for (int64_t i = 0; i < plan.grid.size(0); ++i) frames += g[3 * i];
  plan.cu_seqlens = at::empty({frames + 1}, at::kInt);
  plan.frame_hw = at::empty({frames, 2}, at::kInt);
  int32_t* cu = plan.cu_seqlens.data_ptr<int32_t>();
  int32_t* hw = plan.frame_hw.data_ptr<int32_t>();
  cu[0] = 0;
  int64_t f = 0;
  for (int64_t i = 0; i < plan.grid.size(0); ++i) {
    for (int64_t k = 0; k < g[3 * i]; ++k, ++f) {
      hw[2 * f] = static_cast<int32_t>(g[3 * i + 1]);
      hw[2 * f + 1] = static_cast<int32_t>(g[3 * i + 2]);
      cu[f + 1] = cu[f] + hw[2 * f] * hw[2 * f + 1];
    }
  }
  return plan;
}

// Position of token `j` (0-based inside its frame) of an h x w frame, Qwen2-VL order:
// (merge-block row, merge-block col, in-block row, in-block col).
#if defined(__CUDACC__)
__host__ __device__
#endif
inline void token_position(int32_t j, int32_t w, int32_t m, int32_t* row, int32_t* col) {
  const int32_t block = j / (m * m), in_block = j % (m * m);
  const int32_t blocks_per_row = w / m;
  *row = (block / blocks_per_row) * m + in_block / m;
  *col = (block % blocks_per_row) * m + in_block % m;
}

}  // namespace omni_mega
