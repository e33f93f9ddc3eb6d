// C++ CPU kernel for resize_images: threads over (image, block of rows), in two phases (first pass of every image,
// then second pass), so one large image still keeps every thread busy.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/host_cache.h"
#include "resize_images/resize_images.h"

namespace omni_mega {

// The vertical pass is a multiply-add down columns of contiguous bytes: the compiler vectorizes the inner loop,
// and target_clones adds an AVX2 copy picked at load time (the default build targets baseline x86-64).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define OMNI_MEGA_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define OMNI_MEGA_CLONES
#endif

// out[j] = clip(sum_t weight[t] * in[(first + t * step) * row_bytes + j]) for j < row_bytes: a weighted sum of
// whole rows. step 1 is the vertical pass; the horizontal pass runs it on a transposed block with step C.
OMNI_MEGA_CLONES
static void weighted_rows(const uint8_t* __restrict__ in, int64_t row_bytes, int64_t first, int64_t step,
                          int64_t count, const int32_t* __restrict__ weight, uint8_t* __restrict__ out) {
  // 32 sums at a time stay in registers across all taps (4 AVX2 vectors); an accumulator array in memory was
  // loaded and stored once per tap.
  constexpr int64_t kBlock = 32;
  const uint8_t* base = in + first * row_bytes;
  const int64_t stride = step * row_bytes;
  int64_t j0 = 0;
  for (; j0 + kBlock <= row_bytes; j0 += kBlock) {
    int32_t acc[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) acc[j] = 1 << (kResizePrecisionBits - 1);
    for (int64_t t = 0; t < count; ++t) {
      const uint8_t* row = base + t * stride + j0;
      const int32_t k = weight[t];
      for (int64_t j = 0; j < kBlock; ++j) acc[j] += static_cast<int32_t>(row[j]) * k;
    }
    for (int64_t j = 0; j < kBlock; ++j) out[j0 + j] = clip_fixed(acc[j]);
  }
  for (int64_t j = j0; j < row_bytes; ++j) {  // the last row_bytes % 32 bytes
    int32_t acc = 1 << (kResizePrecisionBits - 1);
    for (int64_t t = 0; t < count; ++t) acc += static_cast<int32_t>(base[t * stride + j]) * weight[t];
    out[j] = clip_fixed(acc);
  }
}

void resample_vertical(const uint8_t* in, int64_t row_bytes, const BicubicTaps& taps, int64_t row_begin,
                       int64_t row_end, uint8_t* out) {
  for (int64_t o = row_begin; o < row_end; ++o)
    weighted_rows(in, row_bytes, taps.first[o], 1, taps.count[o], &taps.weight[o * taps.taps], out + o * row_bytes);
}

#if defined(__SSE2__)
// One 16 x 16 byte tile: out row j = (in[0][j], ..., in[15][j]), by four rounds of interleaving (8, 16, 32 and
// 64-bit lanes); each round doubles the run of consecutive input rows held together.
static void transpose_tile16(const uint8_t* in, int64_t in_pitch, uint8_t* out, int64_t out_pitch) {
  __m128i a[16], b[16];
  for (int r = 0; r < 16; ++r) a[r] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + r * in_pitch));
  for (int k = 0; k < 8; ++k) {  // rows (2k, 2k+1): columns 0-7 | 8-15
    b[2 * k] = _mm_unpacklo_epi8(a[2 * k], a[2 * k + 1]);
    b[2 * k + 1] = _mm_unpackhi_epi8(a[2 * k], a[2 * k + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // rows 4g..4g+3: columns 0-3 | 4-7 | 8-11 | 12-15
    const __m128i* t = b + 4 * g;
    a[4 * g] = _mm_unpacklo_epi16(t[0], t[2]);
    a[4 * g + 1] = _mm_unpackhi_epi16(t[0], t[2]);
    a[4 * g + 2] = _mm_unpacklo_epi16(t[1], t[3]);
    a[4 * g + 3] = _mm_unpackhi_epi16(t[1], t[3]);
  }
  for (int h = 0; h < 2; ++h)  // rows 8h..8h+7: columns (0,1) | (2,3) | ... | (14,15)
    for (int q = 0; q < 4; ++q) {
      b[8 * h + 2 * q] = _mm_unpacklo_epi32(a[8 * h + q], a[8 * h + 4 + q]);
      b[8 * h + 2 * q + 1] = _mm_unpackhi_epi32(a[8 * h + q], a[8 * h + 4 + q]);
    }
  for (int k = 0; k < 8; ++k) {  // all 16 rows: column 2k | 2k + 1
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (2 * k) * out_pitch), _mm_unpacklo_epi64(b[k], b[k + 8]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (2 * k + 1) * out_pitch), _mm_unpackhi_epi64(b[k], b[k + 8]));
  }
}
#endif

// out[j * out_pitch + i] = in[i * in_pitch + j] for i < rows, j < cols: 16 x 16 SSE2 tiles, scalar edges.
static void transpose_bytes(const uint8_t* __restrict__ in, int64_t rows, int64_t cols, int64_t in_pitch,
                            uint8_t* __restrict__ out, int64_t out_pitch) {
  int64_t full_rows = 0, full_cols = 0;
#if defined(__SSE2__)
  full_rows = rows / 16 * 16, full_cols = cols / 16 * 16;
  for (int64_t i = 0; i < full_rows; i += 16)
    for (int64_t j = 0; j < full_cols; j += 16)
      transpose_tile16(in + i * in_pitch + j, in_pitch, out + j * out_pitch + i, out_pitch);
#endif
  for (int64_t i = 0; i < rows; ++i)  // the edges the tiles did not cover (everything without SSE2)
    for (int64_t j = i < full_rows ? full_cols : 0; j < cols; ++j) out[j * out_pitch + i] = in[i * in_pitch + j];
}

// The horizontal pass as weighted sums of whole rows: transpose the block of rows (bytes: row j of the transpose
// is channel j % C of input column j / C), combine transposed rows first[x] * C + c + t * C, transpose back. The
// direct form (a short dot product per output byte) ran ~5x slower than the vectorized row sums (measured).
static void horizontal_transposed(const uint8_t* in, int64_t w, int64_t rows, int64_t C, const BicubicTaps& taps,
                                  uint8_t* out) {
  const int64_t out_w = static_cast<int64_t>(taps.first.size());
  thread_local std::vector<uint8_t> t_in, t_out;
  t_in.resize(static_cast<size_t>(w * C * rows));
  t_out.resize(static_cast<size_t>(out_w * C * rows));
  transpose_bytes(in, rows, w * C, w * C, t_in.data(), rows);
  for (int64_t x = 0; x < out_w; ++x)
    for (int64_t c = 0; c < C; ++c)
      weighted_rows(t_in.data(), rows, static_cast<int64_t>(taps.first[x]) * C + c, C, taps.count[x],
                    &taps.weight[x * taps.taps], t_out.data() + (x * C + c) * rows);
  transpose_bytes(t_out.data(), out_w * C, rows, rows, out, out_w * C);
}

template <int C>
static void horizontal_rows(const uint8_t* in, int64_t w, int64_t rows, const BicubicTaps& taps, uint8_t* out) {
  const int64_t out_w = static_cast<int64_t>(taps.first.size());
  for (int64_t y = 0; y < rows; ++y) {
    const uint8_t* row = in + y * w * C;
    uint8_t* dst = out + y * out_w * C;
    for (int64_t x = 0; x < out_w; ++x) {
      const int32_t* k = &taps.weight[x * taps.taps];
      const uint8_t* p = row + static_cast<int64_t>(taps.first[x]) * C;
      int32_t acc[C];
      for (int c = 0; c < C; ++c) acc[c] = 1 << (kResizePrecisionBits - 1);
      for (int32_t i = 0; i < taps.count[x]; ++i)
        for (int c = 0; c < C; ++c) acc[c] += static_cast<int32_t>(p[i * C + c]) * k[i];
      for (int c = 0; c < C; ++c) dst[x * C + c] = clip_fixed(acc[c]);
    }
  }
}

static void horizontal_rows_any(const uint8_t* in, int64_t w, int64_t rows, int64_t C, const BicubicTaps& taps,
                                uint8_t* out) {
  const int64_t out_w = static_cast<int64_t>(taps.first.size());
  for (int64_t y = 0; y < rows; ++y)
    for (int64_t x = 0; x < out_w; ++x)
      for (int64_t c = 0; c < C; ++c) {
        const uint8_t* p = in + (y * w + taps.first[x]) * C + c;
        int32_t acc = 1 << (kResizePrecisionBits - 1);
        const int32_t* k = &taps.weight[x * taps.taps];
        for (int32_t i = 0; i < taps.count[x]; ++i) acc += static_cast<int32_t>(p[i * C]) * k[i];
        out[(y * out_w + x) * C + c] = clip_fixed(acc);
      }
}

void resample_horizontal(const uint8_t* in, int64_t w, int64_t rows, int64_t channels, const BicubicTaps& taps,
                         uint8_t* out) {
  if (rows >= 16) return horizontal_transposed(in, w, rows, channels, taps, out);  // short blocks: direct form
  switch (channels) {
    case 1: return horizontal_rows<1>(in, w, rows, taps, out);
    case 3: return horizontal_rows<3>(in, w, rows, taps, out);
    case 4: return horizontal_rows<4>(in, w, rows, taps, out);
    default: return horizontal_rows_any(in, w, rows, channels, taps, out);
  }
}

namespace {

// What one image needs: its passes in order, and where its intermediate (between the passes) lives.
struct ImagePlan {
  int64_t h, w, out_h, out_w;
  const uint8_t* src;
  uint8_t* dst;
  bool horizontal, vertical, vertical_first;
  BicubicTaps taps_h, taps_v;
  int64_t mid_first_row = 0;  // horizontal first: the first input row the vertical taps read
  int64_t mid_rows = 0, mid_offset = 0;  // rows and byte offset of the intermediate in the scratch buffer
};

struct Unit {
  int64_t image, row_begin, row_end;
};

// Horizontal blocks are transposed whole: 128 rows keep a block's transposes inside L2 (1,600 px RGB: 600 KB).
constexpr int64_t kRowsHorizontal = 128, kRowsVertical = 16;

void add_units(std::vector<Unit>& units, int64_t image, int64_t rows, int64_t per_unit) {
  for (int64_t r = 0; r < rows; r += per_unit) units.push_back({image, r, std::min(rows, r + per_unit)});
}

}  // namespace

at::Tensor resize_images_cpu(const at::Tensor& data, const at::Tensor& sizes, const at::Tensor& offsets,
                             const at::Tensor& out_sizes, int64_t channels) {
  TORCH_CHECK(data.device().is_cpu(), "resize_images_cpu: data must be on CPU, got ", data.device());
  check_resize_images_args(data, sizes, offsets, out_sizes, channels);
  const at::Tensor hw = sizes.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor off = offsets.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor out_hw = out_sizes.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor src = data.contiguous();
  const int64_t n = hw.size(0), C = channels;
  const int64_t* s = hw.data_ptr<int64_t>();
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t* os = out_hw.data_ptr<int64_t>();
  std::vector<ImagePlan> plans(n);
  int64_t out_bytes = 0, mid_bytes = 0;
  for (int64_t i = 0; i < n; ++i) {
    ImagePlan& p = plans[i];
    p.h = s[2 * i], p.w = s[2 * i + 1], p.out_h = os[2 * i], p.out_w = os[2 * i + 1];
    out_bytes = checked_add(out_bytes, check_resize_image(i, p.h, p.w, p.out_h, p.out_w, o[i], C, src.numel()),
                            "resize_images: out_sizes[", i, "] brings the output past int64 bytes");
    p.horizontal = p.out_w != p.w;  // a pass at scale 1 has weights (0, 1, 0, 0): the identity, skipped
    p.vertical = p.out_h != p.h;
    p.vertical_first = p.horizontal && p.vertical && resize_vertical_first(p.h, p.w, p.out_h, p.out_w);
    p.src = src.data_ptr<uint8_t>() + o[i];
    p.mid_offset = mid_bytes;
    if (p.horizontal && p.vertical) {
      p.mid_rows = p.vertical_first ? p.out_h : 0;  // set below for horizontal first, once taps_v is known
      // An upper bound for horizontal first; sides are <= INT32_MAX, so rows * cols fits.
      const int64_t rows = p.vertical_first ? p.out_h : p.h, cols = p.vertical_first ? p.w : p.out_w;
      const int64_t mid = checked_mul(rows * cols, C, "resize_images: image ", i, ": scratch of ", rows, " x ", cols,
                                      " x ", C, " bytes overflows int64");
      mid_bytes = checked_add(mid_bytes, mid, "resize_images: scratch bytes overflow int64");
    }
  }
  at::Tensor out = empty_recycled({out_bytes}, at::kByte);
  at::Tensor mid = empty_recycled({mid_bytes}, at::kByte);
  uint8_t* out_ptr = out.data_ptr<uint8_t>();
  uint8_t* mid_ptr = mid.data_ptr<uint8_t>();
  for (int64_t i = 0, pos = 0; i < n; ++i) {
    plans[i].dst = out_ptr + pos;
    pos += plans[i].out_h * plans[i].out_w * C;
  }
  // Weights, per image in parallel (a few thousand cubic evaluations each).
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      ImagePlan& p = plans[i];
      if (p.horizontal) p.taps_h = bicubic_taps(p.w, p.out_w);
      if (p.vertical) p.taps_v = bicubic_taps(p.h, p.out_h);
      if (p.horizontal && p.vertical && !p.vertical_first) {
        // Only the input rows some vertical tap reads go through the horizontal pass.
        p.mid_first_row = p.taps_v.first.front();
        p.mid_rows = p.taps_v.first.back() + p.taps_v.count.back() - p.mid_first_row;
        for (auto& f : p.taps_v.first) f -= static_cast<int32_t>(p.mid_first_row);
      }
    }
  });
  // Phase 1: the first (or only) pass of every image; phase 2: the second pass of two-pass images.
  std::vector<Unit> first, second;
  for (int64_t i = 0; i < n; ++i) {
    const ImagePlan& p = plans[i];
    const int64_t h_rows = kRowsHorizontal, v_rows = kRowsVertical;
    if (p.horizontal && p.vertical) {
      add_units(first, i, p.mid_rows, p.vertical_first ? v_rows : h_rows);
      add_units(second, i, p.out_h, p.vertical_first ? h_rows : v_rows);
    } else {
      add_units(first, i, p.out_h, p.horizontal ? h_rows : v_rows);
    }
  }
  auto run_first = [&](const Unit& u) {
    const ImagePlan& p = plans[u.image];
    const int64_t rows = u.row_end - u.row_begin;
    if (!p.horizontal && !p.vertical) {
      std::memcpy(p.dst + u.row_begin * p.w * C, p.src + u.row_begin * p.w * C, rows * p.w * C);
    } else if (!p.vertical) {
      resample_horizontal(p.src + u.row_begin * p.w * C, p.w, rows, C, p.taps_h, p.dst + u.row_begin * p.out_w * C);
    } else if (!p.horizontal) {
      resample_vertical(p.src, p.w * C, p.taps_v, u.row_begin, u.row_end, p.dst);
    } else if (p.vertical_first) {
      resample_vertical(p.src, p.w * C, p.taps_v, u.row_begin, u.row_end, mid_ptr + p.mid_offset);
    } else {
      resample_horizontal(p.src + (p.mid_first_row + u.row_begin) * p.w * C, p.w, rows, C, p.taps_h,
                          mid_ptr + p.mid_offset + u.row_begin * p.out_w * C);
    }
  };
  auto run_second = [&](const Unit& u) {
    const ImagePlan& p = plans[u.image];
    const uint8_t* m = mid_ptr + p.mid_offset;
    if (p.vertical_first) {
      resample_horizontal(m + u.row_begin * p.w * C, p.w, u.row_end - u.row_begin, C, p.taps_h,
                          p.dst + u.row_begin * p.out_w * C);
    } else {
      resample_vertical(m, p.out_w * C, p.taps_v, u.row_begin, u.row_end, p.dst);
    }
  };
  at::parallel_for(0, static_cast<int64_t>(first.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) run_first(first[u]);
  });
  at::parallel_for(0, static_cast<int64_t>(second.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) run_second(second[u]);
  });
  return out;
}

}  // namespace omni_mega

TORCH_LIBRARY_IMPL(omni_mega, CPU, m) { m.impl("resize_images", &omni_mega::resize_images_cpu); }
