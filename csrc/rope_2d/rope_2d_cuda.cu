// CUDA kernel for rope_2d / rope_2d_qk: one pass over x (read once, write once), 16-byte vectorized when strides
// and alignment allow. A block takes a few tokens: phase 1 computes their R/2 (cos, sin) pairs into shared memory
// (fp32 sincosf, full accuracy; fp64 for fp64) from pos and a by-value frequency table; phase 2 streams every head of
// q (and k) through them. No [T, D] cos/sin tensor exists anywhere. Inputs may be strided views; outputs are new
// contiguous [T, H, D] tensors.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <vector>

#include "rope_2d/rope_2d.h"

namespace omni_mega {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxFreqs = 128;  // R/4 <= 128, i.e. rotary_dim <= 512 (ViT head dims are 64..128)
constexpr int kMaxTokensPerBlock = 64;

struct RopeIO {
  const void* x;
  void* y;
  int64_t heads;
  int64_t st, sh, sd;  // element strides of x (token, head, channel)
};

// Passed by value (~1.2 KB of kernel parameters, __grid_constant__ so it is read in place from the constant bank
// even when indexed dynamically): no device allocation or copy for the frequency table.
struct RopeArgs {
  RopeIO io[2];
  int n_io;
  const int32_t* pos;  // [T, 2] contiguous
  int64_t tokens;
  int head_dim, rotary_dim, tokens_per_block;
  bool inverse;
  double freq[kMaxFreqs];
};

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N, bool kStrided>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p, int64_t sd) {
  if constexpr (kStrided) {
    Pack<T, N> r;
#pragma unroll
    for (int i = 0; i < N; ++i) r.v[i] = p[i * sd];
    return r;
  } else {
    return *reinterpret_cast<const Pack<T, N>*>(p);
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

__device__ __forceinline__ void rope_sincos(float a, float* s, float* c) { sincosf(a, s, c); }
__device__ __forceinline__ void rope_sincos(double a, double* s, double* c) { sincos(a, s, c); }

// Elements per global access: PAIRS for "half" (a and b are R/2 apart), 2 * PAIRS for "interleaved".
template <RopeLayout L, int PAIRS>
constexpr int pack_width() {
  return L == RopeLayout::kHalf ? PAIRS : 2 * PAIRS;
}

// Phase 1: (cos, +-sin) of the block's tokens into shared memory, [tokens][R/2][2].
template <typename acc_t, RopeLayout L>
__device__ __forceinline__ void fill_cos_sin(const RopeArgs& args, int64_t t0, int ntok, acc_t* cs) {
  const int half = args.rotary_dim / 2;
  for (int i = threadIdx.x; i < ntok * half; i += blockDim.x) {
    const int tok = i / half, p = i % half;
    int axis;
    int64_t fi;
    rope_pair_source(p, args.rotary_dim, L, &axis, &fi);
    const acc_t phi = static_cast<acc_t>(args.pos[2 * (t0 + tok) + axis]) * static_cast<acc_t>(args.freq[fi]);
    acc_t s, c;
    rope_sincos(phi, &s, &c);
    cs[2 * i] = c;
    cs[2 * i + 1] = args.inverse ? -s : s;
  }
}

template <typename scalar_t, RopeLayout L, int PAIRS, bool kStrided>
__global__ void __launch_bounds__(kThreads) rope_2d_kernel(const __grid_constant__ RopeArgs args) {
  using acc_t = acc_type<scalar_t>;
  constexpr int W = pack_width<L, PAIRS>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* cs = reinterpret_cast<acc_t*>(smem_raw);
  const int half = args.rotary_dim / 2;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * args.tokens_per_block;
  const int ntok = static_cast<int>(min(static_cast<int64_t>(args.tokens_per_block), args.tokens - t0));
  fill_cos_sin<acc_t, L>(args, t0, ntok, cs);
  __syncthreads();

  const int rot_units = L == RopeLayout::kHalf ? half / PAIRS : args.rotary_dim / W;
  const int units = rot_units + (args.head_dim - args.rotary_dim) / W;
  for (int j = 0; j < args.n_io; ++j) {
    const RopeIO io = args.io[j];
    const scalar_t* x = static_cast<const scalar_t*>(io.x);
    scalar_t* y = static_cast<scalar_t*>(io.y);
    const int64_t sd = kStrided ? io.sd : 1;
    const int per_tok = static_cast<int>(io.heads) * units;
    for (int i = threadIdx.x; i < ntok * per_tok; i += blockDim.x) {
      const int tok = i / per_tok, rem = i % per_tok, h = rem / units, u = rem % units;
      const int64_t t = t0 + tok;
      const scalar_t* xp = x + t * io.st + h * io.sh;
      scalar_t* yp = y + (t * io.heads + h) * args.head_dim;
      if (u >= rot_units) {  // channels R..D-1 pass through
        const int d = args.rotary_dim + (u - rot_units) * W;
        store_pack<scalar_t, W>(yp + d, load_pack<scalar_t, W, kStrided>(xp + d * sd, sd));
        continue;
      }
      const acc_t* c = cs + 2 * tok * half;
      if constexpr (L == RopeLayout::kHalf) {
        const int d = u * PAIRS;  // pairs d..d+PAIRS-1: channels d.. and d+R/2..
        const Pack<scalar_t, W> a = load_pack<scalar_t, W, kStrided>(xp + d * sd, sd);
        const Pack<scalar_t, W> b = load_pack<scalar_t, W, kStrided>(xp + (d + half) * sd, sd);
        Pack<scalar_t, W> oa, ob;
#pragma unroll
        for (int e = 0; e < PAIRS; ++e) {
          const acc_t cc = c[2 * (d + e)], ss = c[2 * (d + e) + 1];
          const acc_t va = static_cast<acc_t>(a.v[e]), vb = static_cast<acc_t>(b.v[e]);
          oa.v[e] = static_cast<scalar_t>(va * cc - vb * ss);
          ob.v[e] = static_cast<scalar_t>(vb * cc + va * ss);
        }
        store_pack<scalar_t, W>(yp + d, oa);
        store_pack<scalar_t, W>(yp + d + half, ob);
      } else {
        const int d = u * W;  // pairs d/2..d/2+PAIRS-1, adjacent channels
        const Pack<scalar_t, W> v = load_pack<scalar_t, W, kStrided>(xp + d * sd, sd);
        Pack<scalar_t, W> o;
#pragma unroll
        for (int e = 0; e < PAIRS; ++e) {
          const int p = d / 2 + e;
          const acc_t cc = c[2 * p], ss = c[2 * p + 1];
          const acc_t va = static_cast<acc_t>(v.v[2 * e]), vb = static_cast<acc_t>(v.v[2 * e + 1]);
          o.v[2 * e] = static_cast<scalar_t>(va * cc - vb * ss);
          o.v[2 * e + 1] = static_cast<scalar_t>(vb * cc + va * ss);
        }
        store_pack<scalar_t, W>(yp + d, o);
      }
    }
  }
}

// Widest pack (<= 16 bytes) that every input's strides, alignment and the channel split allow; 0 = strided scalar.
int pick_pairs(const Rope2dPlan& plan, const std::vector<at::Tensor>& xs) {
  const int64_t es = xs[0].element_size(), R = plan.rotary_dim, D = plan.head_dim;
  for (int pairs : {8, 4, 2}) {
    const int64_t w = plan.layout == RopeLayout::kHalf ? pairs : 2 * pairs;
    if (w * es > 16) continue;
    bool ok = (plan.layout == RopeLayout::kHalf ? (R / 2) % pairs == 0 : R % w == 0) && (D - R) % w == 0;
    for (const auto& x : xs) {
      ok = ok && x.stride(2) == 1 && x.stride(0) % w == 0 && x.stride(1) % w == 0 &&
           reinterpret_cast<uintptr_t>(x.const_data_ptr()) % (w * es) == 0;
    }
    if (ok) return pairs;
  }
  return 0;
}

template <typename scalar_t, RopeLayout L, int PAIRS, bool kStrided>
void launch(const RopeArgs& args, int64_t blocks, size_t smem, cudaStream_t stream) {
  rope_2d_kernel<scalar_t, L, PAIRS, kStrided><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, RopeLayout L>
void launch_layout(int pairs, const RopeArgs& args, int64_t blocks, size_t smem, cudaStream_t stream) {
  // Only packs of <= 16 bytes are instantiated; pick_pairs never asks for a wider one.
  constexpr int es = sizeof(scalar_t);
  if constexpr (pack_width<L, 8>() * es <= 16) {
    if (pairs == 8) return launch<scalar_t, L, 8, false>(args, blocks, smem, stream);
  }
  if constexpr (pack_width<L, 4>() * es <= 16) {
    if (pairs == 4) return launch<scalar_t, L, 4, false>(args, blocks, smem, stream);
  }
  if constexpr (pack_width<L, 2>() * es <= 16) {
    if (pairs == 2) return launch<scalar_t, L, 2, false>(args, blocks, smem, stream);
  }
  launch<scalar_t, L, 1, true>(args, blocks, smem, stream);
}

void run_cuda(const Rope2dPlan& plan, const at::Tensor& pos, const std::vector<at::Tensor>& xs,
              const std::vector<at::Tensor>& ys, bool inverse) {
  TORCH_CHECK(xs[0].is_cuda(), "rope_2d_cuda: ", xs.size() == 1 ? "x" : "q", " must be on CUDA, got ",
              xs[0].device());
  TORCH_CHECK(plan.rotary_dim <= 4 * kMaxFreqs, "rope_2d (CUDA): rotary_dim must be <= ", 4 * kMaxFreqs, ", got ",
              plan.rotary_dim);
  if (plan.tokens == 0) return;
  c10::cuda::CUDAGuard guard(xs[0].device());
  const at::Tensor pos_c = pos.contiguous();  // 8 bytes a token: negligible next to x
  RopeArgs args{};
  args.n_io = static_cast<int>(xs.size());
  int64_t items_per_token = 1;
  const int pairs = pick_pairs(plan, xs);
  const int64_t w = pairs == 0 ? (plan.layout == RopeLayout::kHalf ? 1 : 2)
                               : (plan.layout == RopeLayout::kHalf ? pairs : 2 * pairs);
  for (size_t j = 0; j < xs.size(); ++j) {
    args.io[j] = {xs[j].const_data_ptr(), ys[j].data_ptr(), xs[j].size(1), xs[j].stride(0), xs[j].stride(1),
                  xs[j].stride(2)};
    items_per_token += xs[j].size(1) * plan.head_dim / w;
  }
  args.pos = pos_c.const_data_ptr<int32_t>();
  args.tokens = plan.tokens;
  args.head_dim = static_cast<int>(plan.head_dim);
  args.rotary_dim = static_cast<int>(plan.rotary_dim);
  args.inverse = inverse;
  for (int64_t i = 0; i < plan.rotary_dim / 4; ++i) args.freq[i] = rope_freq(plan.theta, i, plan.rotary_dim);
  // ~4 accesses per thread per block: enough independent loads in flight, while the per-token sincos is shared by
  // all H (q and k) heads of the block's tokens.
  const size_t acc_size = xs[0].scalar_type() == at::kDouble ? 8 : 4;
  const int64_t cs_bytes = plan.rotary_dim * static_cast<int64_t>(acc_size);  // per token
  int64_t tpb = (4 * kThreads + items_per_token - 1) / items_per_token;
  tpb = std::max<int64_t>(1, std::min<int64_t>({tpb, kMaxTokensPerBlock, (48 * 1024) / cs_bytes}));
  TORCH_CHECK(tpb * items_per_token < INT_MAX, "rope_2d (CUDA): too many heads x channels per token: ",
              items_per_token);
  args.tokens_per_block = static_cast<int>(tpb);
  const int64_t blocks = (plan.tokens + tpb - 1) / tpb;
  const size_t smem = static_cast<size_t>(tpb * cs_bytes);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs[0].scalar_type(), "rope_2d_cuda", [&] {
    if (plan.layout == RopeLayout::kHalf)
      launch_layout<scalar_t, RopeLayout::kHalf>(pairs, args, blocks, smem, stream);
    else
      launch_layout<scalar_t, RopeLayout::kInterleaved>(pairs, args, blocks, smem, stream);
  });
}

at::Tensor rope_2d_cuda(const at::Tensor& x, const at::Tensor& pos, double theta, c10::string_view layout,
                        int64_t rotary_dim, bool inverse) {
  const Rope2dPlan plan = plan_rope_2d(x, nullptr, pos, theta, layout, rotary_dim);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  run_cuda(plan, pos, {x}, {y}, inverse);
  return y;
}

std::tuple<at::Tensor, at::Tensor> rope_2d_qk_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& pos,
                                                   double theta, c10::string_view layout, int64_t rotary_dim,
                                                   bool inverse) {
  const Rope2dPlan plan = plan_rope_2d(q, &k, pos, theta, layout, rotary_dim);
  at::Tensor yq = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor yk = at::empty(k.sizes(), k.options().memory_format(at::MemoryFormat::Contiguous));
  run_cuda(plan, pos, {q, k}, {yq, yk}, inverse);
  return {yq, yk};
}

}  // namespace
}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CUDA, m) {
  m.impl("rope_2d", &omni_mega::rope_2d_cuda);
  m.impl("rope_2d_qk", &omni_mega::rope_2d_qk_cuda);
}
