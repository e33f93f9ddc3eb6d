// Shared host-side planning for pack_images: validates every input once (both backends call this) and builds the
// per-image token offsets and the normalization lookup table that the CPU and CUDA kernels consume.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"

namespace omni_mega {

// Channels are bounded so the CUDA kernel's lookup table (C x 256 entries of at most 8 bytes) fits in shared memory.
constexpr int64_t kPackImagesMaxChannels = 16;

struct PackImagesPlan {
  at::Tensor sizes;        // int64 [N, 2] (h, w) in pixels, on CPU
  at::Tensor offsets;      // int64 [N] first byte of each HWC image inside `data`, on CPU
  at::Tensor token_start;  // int64 [N + 1] first token of each image (exclusive prefix sum of tokens), on CPU
  at::Tensor lut;          // out_dtype [C, 256]: (v / 255 - mean[c]) / std[c] computed in float64, then rounded once
  int64_t channels = 0;
  int64_t features = 0;    // C * temporal_patch_size * patch_size^2
  int64_t total_tokens = 0;
};

inline void check_pack_images_args(const at::Tensor& data, const at::Tensor& sizes, const at::Tensor& offsets,
                                   int64_t patch_size, int64_t merge_size, int64_t temporal_patch_size,
                                   at::ArrayRef<double> mean, at::ArrayRef<double> std, at::ScalarType out_dtype) {
  check_flat_images(data, sizes, offsets);
  TORCH_CHECK(patch_size >= 1, "patch_size must be >= 1, got ", patch_size);
  TORCH_CHECK(merge_size >= 1, "merge_size must be >= 1, got ", merge_size);
  TORCH_CHECK(temporal_patch_size >= 1, "temporal_patch_size must be >= 1, got ", temporal_patch_size);
  TORCH_CHECK(!mean.empty() && static_cast<int64_t>(mean.size()) <= kPackImagesMaxChannels,
              "mean must have 1..", kPackImagesMaxChannels, " entries (one per channel), got ", mean.size());
  TORCH_CHECK(std.size() == mean.size(), "std must have ", mean.size(), " entries (one per channel, like mean), got ",
              std.size());
  for (size_t c = 0; c < std.size(); ++c) {
    TORCH_CHECK(std[c] != 0.0 && std::isfinite(std[c]) && std::isfinite(mean[c]), "std[", c, "] = ", std[c],
                " and mean[", c, "] = ", mean[c], " must be finite with std != 0");
  }
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kDouble || out_dtype == at::kBFloat16 ||
                  out_dtype == at::kHalf,
              "out_dtype must be Float/Double/BFloat16/Half, got ", out_dtype);
}

inline PackImagesPlan plan_pack_images(const at::Tensor& data, const at::Tensor& sizes, const at::Tensor& offsets,
                                       int64_t patch_size, int64_t merge_size, int64_t temporal_patch_size,
                                       at::ArrayRef<double> mean, at::ArrayRef<double> std,
                                       at::ScalarType out_dtype) {
  check_pack_images_args(data, sizes, offsets, patch_size, merge_size, temporal_patch_size, mean, std, out_dtype);
  PackImagesPlan plan;
  plan.channels = static_cast<int64_t>(mean.size());
  plan.features = plan.channels * temporal_patch_size * patch_size * patch_size;
  plan.sizes = sizes.to(at::kCPU, at::kLong).contiguous();
  plan.offsets = offsets.to(at::kCPU, at::kLong).contiguous();
  const int64_t n = plan.sizes.size(0), factor = patch_size * merge_size;
  const int64_t* hw = plan.sizes.data_ptr<int64_t>();
  const int64_t* off = plan.offsets.data_ptr<int64_t>();
  plan.token_start = at::empty({n + 1}, at::kLong);
  int64_t* ts = plan.token_start.data_ptr<int64_t>();
  ts[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t h = hw[2 * i], w = hw[2 * i + 1];
    TORCH_CHECK(h > 0 && w > 0 && h % factor == 0 && w % factor == 0, "sizes[", i, "] = (", h, ", ", w,
                "): height and width must be positive multiples of patch_size * merge_size = ", factor,
                " (resize with omni_mega.data.images.smart_resize first)");
    const int64_t bytes = h * w * plan.channels;
    TORCH_CHECK(off[i] >= 0 && off[i] + bytes <= data.numel(), "offsets[", i, "] = ", off[i], ": image ", i,
                " needs bytes [", off[i], ", ", off[i] + bytes, ") of data, which has numel ", data.numel());
    ts[i + 1] = ts[i] + (h / patch_size) * (w / patch_size);
  }
  plan.total_tokens = ts[n];
  // cu_seqlens downstream are int32.
  TORCH_CHECK(plan.total_tokens <= std::numeric_limits<int32_t>::max(), "pack_images: ", plan.total_tokens,
              " tokens overflow int32 cu_seqlens");
  at::Tensor lut = at::empty({plan.channels, 256}, at::kDouble);
  double* l = lut.data_ptr<double>();
  for (int64_t c = 0; c < plan.channels; ++c) {
    for (int v = 0; v < 256; ++v) l[c * 256 + v] = (static_cast<double>(v) / 255.0 - mean[c]) / std[c];
  }
  plan.lut = lut.to(out_dtype);
  return plan;
}

}  // namespace omni_mega
