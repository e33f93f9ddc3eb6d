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
  check_flat_images("pack_images", data, sizes, offsets);
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

// Features per token, C * tps * p * p, checked: every factor is a caller's integer.
inline int64_t pack_images_features(int64_t channels, int64_t patch_size, int64_t temporal_patch_size) {
  const auto overflow = [&] {
    return c10::str("pack_images: C * temporal_patch_size * patch_size^2 = ", channels, " x ", temporal_patch_size,
                    " x ", patch_size, "^2 features per token overflows int64");
  };
  int64_t f = checked_mul(channels, temporal_patch_size, overflow());
  f = checked_mul(f, patch_size, overflow());
  return checked_mul(f, patch_size, overflow());
}

// Image i's token count (h / p) * (w / p) after checking its size and its bytes inside data.
inline int64_t pack_images_tokens(const at::Tensor& data, int64_t i, int64_t h, int64_t w, int64_t off,
                                  int64_t patch_size, int64_t factor, int64_t channels) {
  TORCH_CHECK(h > 0 && w > 0 && h % factor == 0 && w % factor == 0, "pack_images: sizes[", i, "] = (", h, ", ", w,
              "): height and width must be positive multiples of patch_size * merge_size = ", factor,
              " (resize with omni_mega.data.images.smart_resize first)");
  check_image_extent("pack_images", i, h, w, channels, off, data.numel());
  return (h / patch_size) * (w / patch_size);  // <= h * w, which fits (checked above)
}

inline PackImagesPlan plan_pack_images(const at::Tensor& data, const at::Tensor& sizes, const at::Tensor& offsets,
                                       int64_t patch_size, int64_t merge_size, int64_t temporal_patch_size,
                                       at::ArrayRef<double> mean, at::ArrayRef<double> std,
                                       at::ScalarType out_dtype) {
  check_pack_images_args(data, sizes, offsets, patch_size, merge_size, temporal_patch_size, mean, std, out_dtype);
  PackImagesPlan plan;
  plan.channels = static_cast<int64_t>(mean.size());
  const int64_t factor = checked_mul(patch_size, merge_size, "pack_images: patch_size * merge_size = ", patch_size,
                                     " x ", merge_size, " overflows int64");
  plan.features = pack_images_features(plan.channels, patch_size, temporal_patch_size);
  plan.sizes = sizes.to(at::kCPU, at::kLong).contiguous();
  plan.offsets = offsets.to(at::kCPU, at::kLong).contiguous();
  const int64_t n = plan.sizes.size(0);
  const int64_t* hw = plan.sizes.data_ptr<int64_t>();
  const int64_t* off = plan.offsets.data_ptr<int64_t>();
  plan.token_start = at::empty({n + 1}, at::kLong);
  int64_t* ts = plan.token_start.data_ptr<int64_t>();
  ts[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t tokens = pack_images_tokens(data, i, hw[2 * i], hw[2 * i + 1], off[i], patch_size, factor,
                                              plan.channels);
    ts[i + 1] = add_tokens_int32("pack_images", ts[i], tokens, "sizes", i);
  }
  plan.total_tokens = ts[n];
  checked_mul(plan.total_tokens, plan.features, "pack_images: the output of ", plan.total_tokens, " tokens x ",
              plan.features, " features overflows int64");
  at::Tensor lut = at::empty({plan.channels, 256}, at::kDouble);
  double* l = lut.data_ptr<double>();
  for (int64_t c = 0; c < plan.channels; ++c) {
    for (int v = 0; v < 256; ++v) l[c * 256 + v] = (static_cast<double>(v) / 255.0 - mean[c]) / std[c];
  }
  plan.lut = lut.to(out_dtype);
  return plan;
}

// The CUDA kernel indexes a patch with int (p, m, tps, C * p * p): larger values are refused, not truncated.
inline void check_pack_images_int32(const PackImagesPlan& plan, int64_t patch_size, int64_t merge_size,
                                    int64_t temporal_patch_size) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  const int64_t per_token = plan.features / temporal_patch_size;  // C * p * p
  TORCH_CHECK(patch_size <= kMax && merge_size <= kMax && temporal_patch_size <= kMax && per_token <= kMax,
              "pack_images (CUDA): patch_size, merge_size, temporal_patch_size and C * patch_size^2 must be <= ",
              kMax, ", got ", patch_size, ", ", merge_size, ", ", temporal_patch_size, ", ", per_token);
}

}  // namespace omni_mega
