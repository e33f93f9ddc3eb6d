// CUDA kernel for pack_images. Sizes depend on values, so the small sizes/offsets tensors are planned on the host
// (one D2H copy of 3N ints when they live on the GPU); the kernel then writes whole tokens.
//
// Layout of the work: a thread block loops over tokens (grid-stride); its threads walk the C*p*p pixels of the
// token's patch, look each byte up in a shared-memory table (C x 256 normalized values, exact float64 math rounded
// once) and write it tps times. For a fixed (channel, t) the p*p outputs are contiguous, so a warp's stores are
// coalesced; output bytes (tps * sizeof(out) per input byte) dominate the traffic.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "pack_images/pack_images.h"

namespace omni_mega {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void pack_images_kernel(const uint8_t* __restrict__ data, const int64_t* __restrict__ hw,
                                   const int64_t* __restrict__ offsets, const int64_t* __restrict__ token_start,
                                   int64_t n_images, int64_t total_tokens, const scalar_t* __restrict__ lut_global,
                                   int p, int m, int tps, int C, scalar_t* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* lut = reinterpret_cast<scalar_t*>(smem_raw);
  for (int i = threadIdx.x; i < C * 256; i += blockDim.x) lut[i] = lut_global[i];
  __syncthreads();
  const int pp = p * p, per_token = C * pp;
  const int64_t F = static_cast<int64_t>(per_token) * tps;
  for (int64_t tok = blockIdx.x; tok < total_tokens; tok += gridDim.x) {
    // Image holding this token: token_start is sorted and short (N + 1); every thread computes the same answer.
    int64_t lo = 0, hi = n_images - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (token_start[mid] <= tok) lo = mid; else hi = mid - 1;
    }
    const int64_t w_px = hw[2 * lo + 1], gw = w_px / p;
    const int64_t j = tok - token_start[lo];
    // Qwen2-VL order inside the image: (merge-block row, merge-block col, in-block row, in-block col).
    const int64_t block = j / (m * m), in_block = j % (m * m);
    const int64_t pr = (block / (gw / m)) * m + in_block / m;
    const int64_t pc = (block % (gw / m)) * m + in_block % m;
    const uint8_t* patch = data + offsets[lo] + (pr * p * w_px + pc * p) * C;
    scalar_t* dst = out + tok * F;
    for (int e = threadIdx.x; e < per_token; e += blockDim.x) {
      const int c = e / pp, r = e - c * pp, y = r / p, x = r - y * p;
      const scalar_t v = lut[c * 256 + patch[(static_cast<int64_t>(y) * w_px + x) * C + c]];
      scalar_t* d = dst + static_cast<int64_t>(c) * tps * pp + r;
      for (int t = 0; t < tps; ++t) d[t * pp] = v;
    }
  }
}

}  // namespace

at::Tensor pack_images_cuda(const at::Tensor& data, const at::Tensor& sizes, const at::Tensor& offsets,
                            int64_t patch_size, int64_t merge_size, int64_t temporal_patch_size,
                            at::ArrayRef<double> mean, at::ArrayRef<double> std, at::ScalarType out_dtype) {
  TORCH_CHECK(data.is_cuda(), "pack_images_cuda: data must be on CUDA, got ", data.device());
  c10::cuda::CUDAGuard guard(data.device());
  PackImagesPlan plan = plan_pack_images(data, sizes, offsets, patch_size, merge_size, temporal_patch_size, mean,
                                         std, out_dtype);
  check_pack_images_int32(plan, patch_size, merge_size, temporal_patch_size);
  const auto dev = data.device();
  at::Tensor out = at::empty({plan.total_tokens, plan.features}, data.options().dtype(out_dtype));
  if (plan.total_tokens == 0) return out;
  at::Tensor hw = plan.sizes.to(dev);
  at::Tensor off = plan.offsets.to(dev);
  at::Tensor ts = plan.token_start.to(dev);
  at::Tensor lut = plan.lut.to(dev);
  const at::Tensor src = data.contiguous();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev.index()));
  // One full wave: 2048 resident threads per SM (sm_80/sm_90) / 256 = 8 blocks per SM. The grid-stride loop
  // amortizes each block's table load over many tokens.
  const int64_t blocks = std::min<int64_t>(plan.total_tokens, static_cast<int64_t>(std::max(sms, 1)) * 8);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_dtype, "pack_images_cuda", [&] {
    const size_t smem = static_cast<size_t>(plan.channels) * 256 * sizeof(scalar_t);
    pack_images_kernel<scalar_t><<<blocks, kThreads, smem, stream>>>(
        src.data_ptr<uint8_t>(), hw.data_ptr<int64_t>(), off.data_ptr<int64_t>(), ts.data_ptr<int64_t>(),
        plan.sizes.size(0), plan.total_tokens, lut.data_ptr<scalar_t>(), static_cast<int>(patch_size),
        static_cast<int>(merge_size), static_cast<int>(temporal_patch_size), static_cast<int>(plan.channels),
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CUDA, m) { m.impl("pack_images", &omni_mega::pack_images_cuda); }
