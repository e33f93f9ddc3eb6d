// Pillow-exact BICUBIC resampling of uint8 HWC images: the 1-D weights, the pass order and the two pass kernels.
// omni_mega/ops/resize_images.py states the algorithm and holds the plain-PyTorch oracle; this header is the same
// arithmetic in C++ (weights in double, sums in int32 fixed point), so the results are identical integers.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/checks.h"

namespace omni_mega {

constexpr int64_t kResizeMaxChannels = 16;
constexpr int kResizePrecisionBits = 22;  // 255 * sum|w| * 2^22 < 2^31: int32 sums cannot overflow

// Per output index o: its taps are input indices first[o] .. first[o] + count[o] - 1 with fixed-point weights
// weight[o * taps + i] (zero past count[o]).
struct BicubicTaps {
  int64_t taps = 0;
  std::vector<int32_t> first, count, weight;
};

inline double keys_cubic(double x) {  // Keys' cubic convolution kernel with a = -0.5, support 2
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

inline BicubicTaps bicubic_taps(int64_t n_in, int64_t n_out) {
  BicubicTaps t;
  const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
  const double stretch = scale < 1.0 ? 1.0 : scale;  // widen the filter by the shrink factor: antialiasing
  const double support = 2.0 * stretch, inv = 1.0 / stretch;
  t.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  t.first.resize(n_out);
  t.count.resize(n_out);
  t.weight.assign(static_cast<size_t>(n_out * t.taps), 0);
  std::vector<double> w(t.taps);
  for (int64_t o = 0; o < n_out; ++o) {
    const double center = (static_cast<double>(o) + 0.5) * scale;
    const int64_t lo = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t hi = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), n_in);
    double total = 0.0;
    for (int64_t i = 0; i < hi - lo; ++i) {
      w[i] = keys_cubic((static_cast<double>(i + lo) - center + 0.5) * inv);
      total += w[i];
    }
    for (int64_t i = 0; i < hi - lo; ++i) {
      const double v = total != 0.0 ? w[i] / total : w[i];
      const double fixed = v * static_cast<double>(1 << kResizePrecisionBits);
      t.weight[o * t.taps + i] = static_cast<int32_t>(v < 0 ? std::trunc(-0.5 + fixed) : std::trunc(0.5 + fixed));
    }
    t.first[o] = static_cast<int32_t>(lo);
    t.count[o] = static_cast<int32_t>(hi - lo);
  }
  return t;
}

// Pillow 13's pass order (measured, see resize_images.py): vertical first when the image shrinks vertically and
// 2 * out_w - out_h > 2 * w - h.
inline bool resize_vertical_first(int64_t h, int64_t w, int64_t out_h, int64_t out_w) {
  return out_h < h && 2 * out_w - out_h > 2 * w - h;
}

inline uint8_t clip_fixed(int32_t acc) {
  const int32_t v = acc >> kResizePrecisionBits;  // arithmetic shift: floor, as the rounding bias assumes
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass over `rows` rows: in [rows, w, C] -> out [rows, out_w, C] (out_w = taps.first.size()).
void resample_horizontal(const uint8_t* in, int64_t w, int64_t rows, int64_t channels, const BicubicTaps& taps,
                         uint8_t* out);

// Vertical pass for output rows [row_begin, row_end): in rows of `row_bytes` bytes -> out rows of the same width.
void resample_vertical(const uint8_t* in, int64_t row_bytes, const BicubicTaps& taps, int64_t row_begin,
                       int64_t row_end, uint8_t* out);

inline void check_resize_images_args(const at::Tensor& data, const at::Tensor& sizes, const at::Tensor& offsets,
                                     const at::Tensor& out_sizes, int64_t channels) {
  check_flat_images("resize_images", data, sizes, offsets);
  TORCH_CHECK(channels >= 1 && channels <= kResizeMaxChannels, "resize_images: channels must be in 1..",
              kResizeMaxChannels, ", got ", channels);
  TORCH_CHECK(out_sizes.dim() == 2 && out_sizes.size(1) == 2 && out_sizes.size(0) == sizes.size(0),
              "resize_images: out_sizes must have shape [N, 2] = [", sizes.size(0), ", 2] (one (h, w) per image), got ",
              out_sizes.sizes());
  // Fractional sizes are a caller's mistake, not something to round: only integer dtypes pass.
  TORCH_CHECK(out_sizes.scalar_type() == at::kInt || out_sizes.scalar_type() == at::kLong,
              "resize_images: out_sizes must have dtype Int/Long, got ", out_sizes.scalar_type());
}

// (h, w) of sizes[i] or out_sizes[i]: each side in 1..INT32_MAX (the taps hold input indices as int32).
inline void check_resize_side(const char* name, int64_t i, int64_t h, int64_t w) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(h > 0 && w > 0, "resize_images: ", name, "[", i, "] = (", h, ", ", w,
              "): height and width must be >= 1");
  TORCH_CHECK(h <= kMax && w <= kMax, "resize_images: ", name, "[", i, "] = (", h, ", ", w,
              "): height and width must be <= ", kMax);
}

// Image i: its sizes, its bytes inside data and its output size; returns the output bytes out_h * out_w * C.
inline int64_t check_resize_image(int64_t i, int64_t h, int64_t w, int64_t out_h, int64_t out_w, int64_t off,
                                  int64_t channels, int64_t numel) {
  check_resize_side("sizes", i, h, w);
  check_resize_side("out_sizes", i, out_h, out_w);
  check_image_extent("resize_images", i, h, w, channels, off, numel);
  // Sides are <= INT32_MAX, so out_h * out_w fits; the channels may not.
  return checked_mul(out_h * out_w, channels, "resize_images: out_sizes[", i, "] = (", out_h, ", ", out_w,
                     "): an image of ", out_h, " x ", out_w, " x ", channels, " bytes overflows int64");
}

}  // namespace omni_mega
