// C++ CPU kernel for pack_images: threads over (image, merge-block row) units; every unit writes a contiguous run
// of m * gw tokens, so threads never share output cache lines except at unit borders.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "common/host_cache.h"
#include "pack_images/pack_images.h"

namespace omni_mega {
namespace {

struct Unit {
  int64_t image;      // which image
  int64_t block_row;  // merge-block row inside it
};

// One pixel row of one patch, every channel: dst[c * frame + x] = lut[c][src[x * C + c]]. Separate and small so the
// compiler keeps its pointers in registers (inlined into the dispatch lambda they were reloaded from the stack on
// every element, measured); kC > 0 fixes the channel count at compile time.
template <typename scalar_t, int64_t kC>
__attribute__((noinline)) void lut_row(const uint8_t* __restrict__ src, int64_t p, int64_t C_arg,
                                       const scalar_t* __restrict__ lut, scalar_t* __restrict__ dst, int64_t frame) {
  const int64_t C = kC > 0 ? kC : C_arg;
  for (int64_t x = 0; x < p; ++x)
    for (int64_t c = 0; c < C; ++c) dst[c * frame + x] = lut[c * 256 + src[x * C + c]];
}

// Writes the m * gw tokens of one merge-block row of one image, Qwen2-VL order: tokens by (block col, in-block row,
// in-block col), features by (channel, temporal, pixel row, pixel col), the frame repeated `tps` times.
template <typename scalar_t>
void pack_block_row(const uint8_t* img, int64_t w_px, int64_t block_row, int64_t p, int64_t m, int64_t tps,
                    int64_t C, const scalar_t* lut, scalar_t* out) {
  const int64_t gw = w_px / p, pp = p * p, F = C * tps * pp, frame = tps * pp;
  for (int64_t bc = 0; bc < gw / m; ++bc)
    for (int64_t ir = 0; ir < m; ++ir)
      for (int64_t ic = 0; ic < m; ++ic, out += F) {
        const int64_t pr = block_row * m + ir, pc = bc * m + ic;
        const uint8_t* patch = img + ((pr * p) * w_px + pc * p) * C;
        for (int64_t y = 0; y < p; ++y) {
          if (C == 3) {
            lut_row<scalar_t, 3>(patch + y * w_px * C, p, C, lut, out + y * p, frame);
          } else {
            lut_row<scalar_t, 0>(patch + y * w_px * C, p, C, lut, out + y * p, frame);
          }
        }
        // A still image is its own temporal neighbour: copy each channel's p x p frame tps - 1 more times.
        for (int64_t c = 0; c < C; ++c)
          for (int64_t t = 1; t < tps; ++t)
            std::memcpy(out + c * frame + t * pp, out + c * frame, pp * sizeof(scalar_t));
      }
}

}  // namespace

at::Tensor pack_images_cpu(const at::Tensor& data, const at::Tensor& sizes, const at::Tensor& offsets,
                           int64_t patch_size, int64_t merge_size, int64_t temporal_patch_size,
                           at::ArrayRef<double> mean, at::ArrayRef<double> std, at::ScalarType out_dtype) {
  TORCH_CHECK(data.device().is_cpu(), "pack_images_cpu: data must be on CPU, got ", data.device());
  PackImagesPlan plan = plan_pack_images(data, sizes, offsets, patch_size, merge_size, temporal_patch_size, mean,
                                         std, out_dtype);
  // Recycled: first-touch page faults on a fresh output cost ~10x the packing itself (common/host_cache.h).
  at::Tensor out = empty_recycled({plan.total_tokens, plan.features}, out_dtype);
  const int64_t n = plan.sizes.size(0), p = patch_size, m = merge_size;
  const int64_t* hw = plan.sizes.data_ptr<int64_t>();
  const int64_t* off = plan.offsets.data_ptr<int64_t>();
  const int64_t* ts = plan.token_start.data_ptr<int64_t>();
  std::vector<Unit> units;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t br = 0; br < hw[2 * i] / (p * m); ++br) units.push_back({i, br});
  const at::Tensor src = data.contiguous();
  const uint8_t* base = src.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_dtype, "pack_images_cpu", [&] {
    const scalar_t* lut = plan.lut.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(units.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t i = units[u].image, br = units[u].block_row, w_px = hw[2 * i + 1];
        const int64_t first_token = ts[i] + br * m * (w_px / p);
        pack_block_row<scalar_t>(base + off[i], w_px, br, p, m, temporal_patch_size, plan.channels, lut,
                                 dst + first_token * plan.features);
      }
    });
  });
  return out;
}

}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CPU, m) { m.impl("pack_images", &omni_mega::pack_images_cpu); }
