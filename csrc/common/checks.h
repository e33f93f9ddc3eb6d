// Input validation shared by every backend of every op: written once here, not per backend, so the CPU and CUDA
// paths refuse the same inputs with the same messages.
// Messages name the argument, what was expected and what was given.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>
#include <limits>
#include <string>

namespace omni_mega {

inline std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D, got shape ", t.sizes());
}

inline void check_dtype(const at::Tensor& t, const char* name, std::initializer_list<at::ScalarType> allowed) {
  for (auto s : allowed) {
    if (t.scalar_type() == s) return;
  }
  std::string names;
  for (auto s : allowed) names += std::string(names.empty() ? "" : "/") + c10::toString(s);
  TORCH_CHECK(false, name, " must have dtype ", names, ", got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(), " and ",
              b.device());
}

// a * b, or an error made of `msg...` when the product does not fit int64. Sizes and offsets come from user tensors;
// a product that wrapped around would pass every bounds check after it (and then index far outside the data).
template <typename... Msg>
inline int64_t checked_mul(int64_t a, int64_t b, const Msg&... msg) {
  int64_t out = 0;
  TORCH_CHECK(!c10::mul_overflows(a, b, &out), msg...);
  return out;
}

// a + b, or an error made of `msg...` when the sum does not fit int64.
template <typename... Msg>
inline int64_t checked_add(int64_t a, int64_t b, const Msg&... msg) {
  int64_t out = 0;
  TORCH_CHECK(!c10::add_overflows(a, b, &out), msg...);
  return out;
}

// a + b for a, b >= 0, exact in uint64 (it cannot wrap there): for messages that print an end that may pass int64.
inline uint64_t unsigned_sum(int64_t a, int64_t b) { return static_cast<uint64_t>(a) + static_cast<uint64_t>(b); }

// A flat image batch: data uint8 [bytes] holding HWC images, sizes int [N, 2] (h, w), offsets int [N] (first byte of
// each image). Shapes and dtypes only; each op checks the values against its own rules. `op` prefixes every message:
// these checks reject what a caller hands in (a float image, say), so the message says which op refused it.
inline void check_flat_images(const char* op, const at::Tensor& data, const at::Tensor& sizes,
                              const at::Tensor& offsets) {
  TORCH_CHECK(data.dim() == 1 && data.scalar_type() == at::kByte, op,
              ": data must be 1-D with dtype Byte (uint8), got ", data.scalar_type(), " ", data.sizes());
  TORCH_CHECK(sizes.dim() == 2 && sizes.size(1) == 2 && (sizes.scalar_type() == at::kInt ||
                                                         sizes.scalar_type() == at::kLong),
              op, ": sizes must have shape [N, 2] (h, w) and dtype Int/Long, got ", sizes.scalar_type(), " ",
              sizes.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == sizes.size(0) &&
                  (offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong),
              op, ": offsets must have shape [N] = [", sizes.size(0),
              "] (one per row of sizes) and dtype Int/Long, got ", offsets.scalar_type(), " ", offsets.sizes());
}

// Image i of a flat batch: h x w x C bytes from offsets[i] = off must lie inside data (numel bytes). Returns the
// byte count. h and w are already known to be >= 1. Checked as bytes <= numel, then off <= numel - bytes: neither
// can overflow, while off + bytes can (an offset near INT64_MAX wrapped to a small number and read wild memory).
inline int64_t check_image_extent(const char* op, int64_t i, int64_t h, int64_t w, int64_t channels, int64_t off,
                                  int64_t numel) {
  const auto overflow = [&] {
    return c10::str(op, ": sizes[", i, "] = (", h, ", ", w, "): an image of ", h, " x ", w, " x ", channels,
                    " bytes overflows int64");
  };
  int64_t hw = 0, bytes = 0;
  TORCH_CHECK(!c10::mul_overflows(h, w, &hw) && !c10::mul_overflows(hw, channels, &bytes), overflow());
  TORCH_CHECK(off >= 0, op, ": offsets[", i, "] = ", off, ": must be >= 0");
  TORCH_CHECK(bytes <= numel && off <= numel - bytes, op, ": offsets[", i, "] = ", off, ": image ", i,
              " needs bytes [", off, ", ", unsigned_sum(off, bytes), ") of data, which has numel ", numel);
  return bytes;
}

// cu_seqlens downstream are int32: a running token count must stay <= INT32_MAX. `tokens` >= 0.
inline int64_t add_tokens_int32(const char* op, int64_t total, int64_t tokens, const char* what, int64_t i) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(tokens <= kMax - total, op, ": ", what, "[", i, "] brings the token count past ", kMax,
              " (int32 cu_seqlens)");
  return total + tokens;
}

// grid_thw [N, 3] integer (t, h, w) in patches. Values are checked on the host copy (see validate_grid_values).
inline void check_grid_thw(const at::Tensor& grid_thw) {
  check_dim(grid_thw, "grid_thw", 2);
  TORCH_CHECK(grid_thw.size(1) == 3, "grid_thw must have shape [N, 3] (t, h, w), got ", grid_thw.sizes());
  check_dtype(grid_thw, "grid_thw", {at::kInt, at::kLong});
}

// Checks values of a host int64 [N, 3] grid and returns the total token count (<= INT32_MAX).
inline int64_t validate_grid_values(const at::Tensor& grid_cpu, int64_t merge_size) {
  TORCH_CHECK(merge_size >= 1, "merge_size must be >= 1, got ", merge_size);
  const int64_t* g = grid_cpu.data_ptr<int64_t>();
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  int64_t total = 0;
  for (int64_t i = 0; i < grid_cpu.size(0); ++i) {
    const int64_t t = g[3 * i], h = g[3 * i + 1], w = g[3 * i + 2];
    TORCH_CHECK(t > 0 && h > 0 && w > 0, "grid_thw[", i, "] = (", t, ", ", h, ", ", w,
                ") has a zero or negative size; every t, h, w must be >= 1");
    TORCH_CHECK(h % merge_size == 0 && w % merge_size == 0, "grid_thw[", i, "] = (", t, ", ", h, ", ", w,
                "): h and w must be divisible by merge_size=", merge_size);
    // t * h * w can pass int64 (it wrapped to 0 once and planned 2^31 empty frames): a product beyond int64 is
    // beyond int32 too, so it fails the same check as any other count past INT32_MAX.
    int64_t hw = 0, thw = 0;
    const bool wraps = c10::mul_overflows(h, w, &hw) || c10::mul_overflows(t, hw, &thw);
    total = add_tokens_int32("vision_positions", total, wraps ? kMax + 1 : thw, "grid_thw", i);
  }
  return total;
}

}  // namespace omni_mega
