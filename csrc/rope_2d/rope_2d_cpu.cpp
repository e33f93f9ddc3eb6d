// C++ CPU kernel for rope_2d / rope_2d_qk: threads over tokens. Each token's R/2 (cos, sin) pairs are gathered once
// into a small per-thread buffer (from a per-position-value table, see AngleTable) and reused for every head of q
// (and k), so no [T, D] table is ever built.
// Inputs may be any strided view; the output is a new contiguous [T, H, D] tensor.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "rope_2d/rope_2d.h"

namespace omni_mega {
namespace {

// fp32 math for fp32/bf16/fp16 (as Qwen2-VL and Kimi-VL do), fp64 for fp64.
template <typename scalar_t>
using rope_acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Rotates all heads of one token. x: token's [H, D] view with strides (sh, sd); y: contiguous [H, D].
// cs: [R/2] cos followed by [R/2] (signed) sin. kUnit (sd == 1) lets the compiler vectorize the inner loops.
template <typename scalar_t, bool kUnit>
void rotate_token(const scalar_t* x, int64_t sh, int64_t sd, scalar_t* y, int64_t heads, const Rope2dPlan& plan,
                  const rope_acc_t<scalar_t>* cs) {
  using acc_t = rope_acc_t<scalar_t>;
  const int64_t D = plan.head_dim, R = plan.rotary_dim, half = R / 2;
  const acc_t* c = cs;
  const acc_t* s = cs + half;
  for (int64_t h = 0; h < heads; ++h) {
    const scalar_t* xh = x + h * sh;
    scalar_t* yh = y + h * D;
    auto ld = [&](int64_t d) { return static_cast<acc_t>(xh[kUnit ? d : d * sd]); };
    if (plan.layout == RopeLayout::kHalf) {
      for (int64_t p = 0; p < half; ++p) {
        const acc_t a = ld(p), b = ld(p + half);
        yh[p] = static_cast<scalar_t>(a * c[p] - b * s[p]);
        yh[p + half] = static_cast<scalar_t>(b * c[p] + a * s[p]);
      }
    } else {
      for (int64_t p = 0; p < half; ++p) {
        const acc_t a = ld(2 * p), b = ld(2 * p + 1);
        yh[2 * p] = static_cast<scalar_t>(a * c[p] - b * s[p]);
        yh[2 * p + 1] = static_cast<scalar_t>(b * c[p] + a * s[p]);
      }
    }
    for (int64_t d = R; d < D; ++d) yh[d] = xh[kUnit ? d : d * sd];
  }
}

// (cos, sin)(v * f_i) for every position value v in [lo, lo + span) and i < R/4. Positions are small integers shared
// by many tokens (a 64x64-patch image has 64 distinct rows), so this turns T * R/2 sincos into span * R/4; the angle
// is formed exactly as in the per-token path, so results are bitwise the same either way.
template <typename acc_t>
struct AngleTable {
  int64_t lo = 0, span = 0;
  std::vector<acc_t> cs;  // [span][R/4][2]
};

template <typename acc_t>
AngleTable<acc_t> build_angle_table(const int32_t* ps, int64_t tokens, const std::vector<acc_t>& freq) {
  AngleTable<acc_t> tab;
  if (tokens == 0) return tab;
  int64_t lo = ps[0], hi = ps[0];
  for (int64_t i = 0; i < 2 * tokens; ++i) lo = std::min<int64_t>(lo, ps[i]), hi = std::max<int64_t>(hi, ps[i]);
  const int64_t quarter = static_cast<int64_t>(freq.size());
  // Only when it is smaller than the per-token work (T * R/2 sincos); huge or sparse positions skip it.
  if ((hi - lo + 1) * quarter > tokens * 2 * quarter) return tab;
  tab.lo = lo;
  tab.span = hi - lo + 1;
  tab.cs.resize(tab.span * quarter * 2);
  at::parallel_for(0, tab.span, 64, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v)
      for (int64_t i = 0; i < quarter; ++i) {
        const acc_t phi = static_cast<acc_t>(static_cast<int32_t>(lo + v)) * freq[i];
        tab.cs[(v * quarter + i) * 2] = std::cos(phi);
        tab.cs[(v * quarter + i) * 2 + 1] = std::sin(phi);
      }
  });
  return tab;
}

template <typename scalar_t>
void rope_cpu_kernel(const Rope2dPlan& plan, const at::Tensor& pos, const std::vector<at::Tensor>& xs,
                     const std::vector<at::Tensor>& ys, bool inverse) {
  using acc_t = rope_acc_t<scalar_t>;
  const int64_t half = plan.rotary_dim / 2, quarter = plan.rotary_dim / 4;
  // f_i rounded once to the compute type: the same numbers the reference and the GPU kernels use.
  std::vector<acc_t> freq(quarter);
  for (int64_t i = 0; i < quarter; ++i) freq[i] = static_cast<acc_t>(rope_freq(plan.theta, i, plan.rotary_dim));
  std::vector<int> axis(half);
  std::vector<int64_t> fidx(half);
  for (int64_t p = 0; p < half; ++p) rope_pair_source(p, plan.rotary_dim, plan.layout, &axis[p], &fidx[p]);
  const int32_t* ps = pos.data_ptr<int32_t>();
  const AngleTable<acc_t> tab = build_angle_table(ps, plan.tokens, freq);
  const acc_t sign = inverse ? acc_t(-1) : acc_t(1);
  int64_t work_per_token = 1;
  for (const auto& x : xs) work_per_token += x.size(1) * plan.head_dim;
  // ~32K elements per task: enough to amortize the thread hand-off, small enough to balance 2..64 threads.
  const int64_t grain = std::max<int64_t>(1, 32768 / work_per_token);
  at::parallel_for(0, plan.tokens, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> cs(2 * half);  // this token's [R/2] cos then [R/2] signed sin
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t p = 0; p < half; ++p) {
        const int32_t v = ps[2 * t + axis[p]];
        if (tab.span > 0) {
          const acc_t* e = &tab.cs[((v - tab.lo) * quarter + fidx[p]) * 2];
          cs[p] = e[0];
          cs[half + p] = sign * e[1];
        } else {
          const acc_t phi = static_cast<acc_t>(v) * freq[fidx[p]];
          cs[p] = std::cos(phi);
          cs[half + p] = sign * std::sin(phi);
        }
      }
      for (size_t j = 0; j < xs.size(); ++j) {
        const at::Tensor& x = xs[j];
        const scalar_t* xt = x.const_data_ptr<scalar_t>() + t * x.stride(0);
        scalar_t* yt = ys[j].data_ptr<scalar_t>() + t * x.size(1) * plan.head_dim;
        if (x.stride(2) == 1)
          rotate_token<scalar_t, true>(xt, x.stride(1), 1, yt, x.size(1), plan, cs.data());
        else
          rotate_token<scalar_t, false>(xt, x.stride(1), x.stride(2), yt, x.size(1), plan, cs.data());
      }
    }
  });
}

void run_cpu(const Rope2dPlan& plan, const at::Tensor& pos, const std::vector<at::Tensor>& xs,
             const std::vector<at::Tensor>& ys, bool inverse) {
  // pos is tiny (8 bytes a token against 2*H*D bytes of x): a contiguous copy, if needed, costs nothing measurable.
  const at::Tensor pos_c = pos.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs[0].scalar_type(), "rope_2d_cpu",
                                  [&] { rope_cpu_kernel<scalar_t>(plan, pos_c, xs, ys, inverse); });
}

at::Tensor rope_2d_cpu(const at::Tensor& x, const at::Tensor& pos, double theta, c10::string_view layout,
                       int64_t rotary_dim, bool inverse) {
  const Rope2dPlan plan = plan_rope_2d(x, nullptr, pos, theta, layout, rotary_dim);
  TORCH_CHECK(x.device().is_cpu(), "rope_2d_cpu: x must be on CPU, got ", x.device());
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  run_cpu(plan, pos, {x}, {y}, inverse);
  return y;
}

std::tuple<at::Tensor, at::Tensor> rope_2d_qk_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos,
                                                  double theta, c10::string_view layout, int64_t rotary_dim,
                                                  bool inverse) {
  const Rope2dPlan plan = plan_rope_2d(q, &k, pos, theta, layout, rotary_dim);
  TORCH_CHECK(q.device().is_cpu(), "rope_2d_qk_cpu: q must be on CPU, got ", q.device());
  at::Tensor yq = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor yk = at::empty(k.sizes(), k.options().memory_format(at::MemoryFormat::Contiguous));
  run_cpu(plan, pos, {q, k}, {yq, yk}, inverse);
  return {yq, yk};
}

}  // namespace
}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CPU, m) {
  m.impl("rope_2d", &omni_mega::rope_2d_cpu);
  m.impl("rope_2d_qk", &omni_mega::rope_2d_qk_cpu);
}
