// Input validation shared by every backend of every op: written once here, not per backend (CONVENTIONS.md).
// Messages name the argument, what was expected and what was given.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

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

// A flat image batch: data uint8 [bytes] holding HWC images, sizes int [N, 2] (h, w), offsets int [N] (first byte of
// each image). Shapes and dtypes only; each op checks the values against its own rules.
inline void check_flat_images(const at::Tensor& data, const at::Tensor& sizes, const at::Tensor& offsets) {
  check_dim(data, "data", 1);
  check_dtype(data, "data", {at::kByte});
  check_dim(sizes, "sizes", 2);
  TORCH_CHECK(sizes.size(1) == 2, "sizes must have shape [N, 2] (h, w), got ", sizes.sizes());
  check_dtype(sizes, "sizes", {at::kInt, at::kLong});
  check_dim(offsets, "offsets", 1);
  check_dtype(offsets, "offsets", {at::kInt, at::kLong});
  TORCH_CHECK(offsets.size(0) == sizes.size(0), "offsets must have shape [N] = [", sizes.size(0),
              "] (one per row of sizes), got ", offsets.sizes());
}

// grid_thw [N, 3] integer (t, h, w) in patches. Values are checked on the host copy (see validate_grid_values).
inline void check_grid_thw(const at::Tensor& grid_thw) {
  check_dim(grid_thw, "grid_thw", 2);
  TORCH_CHECK(grid_thw.size(1) == 3, "grid_thw must have shape [N, 3] (t, h, w), got ", grid_thw.sizes());
  check_dtype(grid_thw, "grid_thw", {at::kInt, at::kLong});
}

// Checks values of a host int64 [N, 3] grid and returns the total token count.
inline int64_t validate_grid_values(const at::Tensor& grid_cpu, int64_t merge_size) {
  TORCH_CHECK(merge_size >= 1, "merge_size must be >= 1, got ", merge_size);
  const int64_t* g = grid_cpu.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t i = 0; i < grid_cpu.size(0); ++i) {
    const int64_t t = g[3 * i], h = g[3 * i + 1], w = g[3 * i + 2];
    TORCH_CHECK(t > 0 && h > 0 && w > 0, "grid_thw[", i, "] = (", t, ", ", h, ", ", w,
                ") has a zero or negative size; every t, h, w must be >= 1");
    TORCH_CHECK(h % merge_size == 0 && w % merge_size == 0, "grid_thw[", i, "] = (", t, ", ", h, ", ", w,
                "): h and w must be divisible by merge_size=", merge_size);
    total += t * h * w;
  }
  TORCH_CHECK(total <= std::numeric_limits<int32_t>::max(), "vision_positions: ", total,
              " tokens overflow int32 cu_seqlens");
  return total;
}

}  // namespace omni_mega
