// C++ CPU kernel for vision_positions: threads over frames, each frame written in Qwen2-VL order.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "vision_positions/vision_positions.h"

namespace omni_mega {

std::tuple<at::Tensor, at::Tensor> vision_positions_cpu(const at::Tensor& grid_thw, int64_t merge_size) {
  TORCH_CHECK(grid_thw.device().is_cpu(), "vision_positions_cpu: grid_thw must be on CPU, got ", grid_thw.device());
  VisionPositionsPlan plan = plan_vision_positions(grid_thw, merge_size);
  at::Tensor pos = at::empty({plan.total_tokens, 2}, at::kInt);
  const int32_t* cu = plan.cu_seqlens.data_ptr<int32_t>();
  const int32_t* hw = plan.frame_hw.data_ptr<int32_t>();
  int32_t* out = pos.data_ptr<int32_t>();
  const int32_t m = static_cast<int32_t>(merge_size);
  at::parallel_for(0, plan.frame_hw.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t f = begin; f < end; ++f) {
      const int32_t h = hw[2 * f], w = hw[2 * f + 1];
      // Direct nested loops: sequential writes, no division per token.
      int32_t* p = out + 2 * static_cast<int64_t>(cu[f]);
      for (int32_t br = 0; br < h / m; ++br)
        for (int32_t bc = 0; bc < w / m; ++bc)
          for (int32_t ir = 0; ir < m; ++ir)
            for (int32_t ic = 0; ic < m; ++ic) {
              *p++ = br * m + ir;
              *p++ = bc * m + ic;
            }
    }
  });
  return {pos, plan.cu_seqlens};
}

}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CPU, m) { m.impl("vision_positions", &omni_mega::vision_positions_cpu); }
