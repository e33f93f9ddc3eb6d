// Shared host checks and the pair/frequency rules of rope_2d, used by the CPU and CUDA kernels alike.
//
// Both layouts rotate R/2 pairs (a, b) of the first R = rotary_dim channels of every head:
//   out_a = x_a cos(phi) - x_b sin(phi),   out_b = x_b cos(phi) + x_a sin(phi)
// with phi = pos[axis] * f_i and f_i = theta^(-4 i / R), i < R/4 (Qwen2-VL's theta^(-2i/(R/2)) is the same number).
//   half (Qwen2-VL, Ovis2.5): pair p < R/2 is (p, p + R/2); p < R/4 uses row * f_p, else col * f_{p - R/4}.
//   interleaved (Kimi-VL):    pair p < R/2 is (2p, 2p + 1); even p uses col * f_{p/2}, odd p uses row * f_{p/2}.
// The inverse rotation (backward) negates sin. Channels R..D-1 pass through unchanged.
#pragma once

#include <cmath>
#include <string>

#include "common/checks.h"

#if defined(__CUDACC__)
#define OMNI_HD __host__ __device__
#else
#define OMNI_HD
#endif

namespace omni_mega {

enum class RopeLayout : int { kHalf = 0, kInterleaved = 1 };

struct Rope2dPlan {
  int64_t tokens = 0;      // T
  int64_t head_dim = 0;    // D
  int64_t rotary_dim = 0;  // R (first R channels rotate)
  RopeLayout layout = RopeLayout::kHalf;
  double theta = 10000.0;
};

inline RopeLayout parse_rope_layout(c10::string_view layout) {
  if (layout == "half") return RopeLayout::kHalf;
  if (layout == "interleaved") return RopeLayout::kInterleaved;
  TORCH_CHECK(false, "layout must be \"half\" or \"interleaved\", got \"", std::string(layout), "\"");
  return RopeLayout::kHalf;  // unreachable
}

// x (or q/k): [T, H, D] floating, D divisible by 4.
inline void check_rope_x(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 3, name, " must be 3-D [T, H, D] (THD), got shape ", x.sizes());
  check_dtype(x, name, {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble});
  TORCH_CHECK(x.size(2) % 4 == 0, name, " head dim D must be divisible by 4 (2 axes x (cos, sin) pairs), got D=",
              x.size(2), " in shape ", x.sizes());
}

// Validates every argument and returns the plan. `k` is null for the single-tensor op.
inline Rope2dPlan plan_rope_2d(const at::Tensor& x, const at::Tensor* k, const at::Tensor& pos, double theta,
                               c10::string_view layout, int64_t rotary_dim) {
  const char* xn = k ? "q" : "x";
  check_rope_x(x, xn);
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 2, "pos must have shape [T, 2] (row, col), got ", pos.sizes());
  check_dtype(pos, "pos", {at::kInt});
  check_same_device(x, xn, pos, "pos");
  TORCH_CHECK(pos.size(0) == x.size(0), "pos must have one row per token: ", xn, " has T=", x.size(0),
              " tokens (shape ", x.sizes(), ") but pos has shape ", pos.sizes());
  if (k) {
    check_rope_x(*k, "k");
    check_same_device(x, "q", *k, "k");
    TORCH_CHECK(k->scalar_type() == x.scalar_type(), "q and k must have the same dtype, got ", x.scalar_type(),
                " and ", k->scalar_type());
    TORCH_CHECK(k->size(0) == x.size(0) && k->size(2) == x.size(2),
                "q and k must have the same T and D, got shapes ", x.sizes(), " and ", k->sizes());
  }
  TORCH_CHECK(std::isfinite(theta) && theta > 0, "theta must be a positive finite number, got ", theta);
  Rope2dPlan plan;
  plan.tokens = x.size(0);
  plan.head_dim = x.size(2);
  plan.rotary_dim = rotary_dim;
  plan.layout = parse_rope_layout(layout);
  plan.theta = theta;
  TORCH_CHECK(rotary_dim >= 4 && rotary_dim <= plan.head_dim && rotary_dim % 4 == 0,
              "rotary_dim must be a multiple of 4 in [4, D=", plan.head_dim, "], got ", rotary_dim);
  return plan;
}

// f_i = theta^(-4 i / R), computed in double and rounded once to the compute type by the caller.
inline double rope_freq(double theta, int64_t i, int64_t rotary_dim) {
  return std::pow(theta, -(4.0 * static_cast<double>(i)) / static_cast<double>(rotary_dim));
}

// For pair p of R/2: which position axis (0 = row, 1 = col) and which frequency index drive its angle.
OMNI_HD inline void rope_pair_source(int64_t p, int64_t rotary_dim, RopeLayout layout, int* axis, int64_t* freq_idx) {
  if (layout == RopeLayout::kHalf) {
    const int64_t quarter = rotary_dim / 4;
    *axis = p < quarter ? 0 : 1;
    *freq_idx = p < quarter ? p : p - quarter;
  } else {
    *axis = (p % 2 == 0) ? 1 : 0;
    *freq_idx = p / 2;
  }
}

}  // namespace omni_mega
