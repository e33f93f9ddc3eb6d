// Every omni_mega op schema, in one readable list. Backend files (csrc/<op>/<op>_cpu.cpp, <op>_cuda.cu) only
// register implementations with TORCH_LIBRARY_IMPL; the Python side (omni_mega/ops/<op>.py) adds fake tensors
// and autograd rules.
#include <Python.h>
#include <torch/library.h>

#include "common/host_cache.h"

TORCH_LIBRARY(omni_mega, m) {
  // grid_thw int32/int64 [N, 3] -> (pos int32 [T, 2] (row, col), cu_seqlens int32 [sum_i t_i + 1]).
  m.def("vision_positions(Tensor grid_thw, int merge_size) -> (Tensor, Tensor)");
  // [rope_2d schemas]
  // x [T, H, D] THD float, pos int32 [T, 2] (row, col) -> rotated x [T, H, D] (contiguous). layout "half" (Qwen2-VL)
  // or "interleaved" (Kimi-VL); the first rotary_dim channels rotate; inverse rotates by -angle (the backward).
  m.def("rope_2d(Tensor x, Tensor pos, float theta, str layout, int rotary_dim, bool inverse) -> Tensor");
  // q [T, Hq, D], k [T, Hk, D] rotated in one pass (the (cos, sin) of a token are computed once for both).
  m.def("rope_2d_qk(Tensor q, Tensor k, Tensor pos, float theta, str layout, int rotary_dim, bool inverse) -> (Tensor, Tensor)");
  // [vet schemas]
  // Ovis visual head + Visual Embedding Table, blockwise over V (csrc/vet/vet.h). x/head_weight/ln_*/table share one
  // float dtype; mean/rstd/lse are [N] in fp32 (fp64 for fp64 inputs). block_n/block_v = 0 picks the device default.
  m.def("vet_head_fwd(Tensor x, Tensor head_weight, Tensor ln_weight, Tensor ln_bias, Tensor table, int num_indicators, "
        "float ln_eps, int block_n, int block_v) -> (Tensor out, Tensor mean, Tensor rstd, Tensor lse)");
  m.def("vet_head_bwd(Tensor grad_out, Tensor x, Tensor head_weight, Tensor ln_weight, Tensor ln_bias, Tensor table, "
        "Tensor out, Tensor mean, Tensor rstd, Tensor lse, int num_indicators, int block_n, int block_v) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  // logits [N, V - n_ind] -> (out [N, D] in table's dtype, lse [N]).
  m.def("vet_embed_fwd(Tensor logits, Tensor table, int num_indicators, int block_n, int block_v) -> "
        "(Tensor out, Tensor lse)");
  m.def("vet_embed_bwd(Tensor grad_out, Tensor logits, Tensor table, Tensor out, Tensor lse, int num_indicators, "
        "int block_n, int block_v) -> (Tensor, Tensor)");
  // [pack_images schemas]
  // data uint8 [bytes] (HWC images back to back), sizes int32/int64 [N, 2] (h, w), offsets int32/int64 [N] ->
  // pixel_values out_dtype [T, C*tps*p*p] in Qwen2-VL token/feature order, C = len(mean).
  m.def("pack_images(Tensor data, Tensor sizes, Tensor offsets, int patch_size, int merge_size, "
        "int temporal_patch_size, float[] mean, float[] std, ScalarType out_dtype) -> Tensor");
  // [resize_images schemas]
  // data uint8 [bytes] (HWC images back to back), sizes/offsets as pack_images, out_sizes int [N, 2] ->
  // uint8 [sum_i out_h * out_w * C]: every image resized with Pillow's BICUBIC filter, bit for bit.
  m.def("resize_images(Tensor data, Tensor sizes, Tensor offsets, Tensor out_sizes, int channels) -> Tensor");
  // The recycling pool for large host outputs (csrc/common/host_cache.h): free bytes held, and a way to drop them.
  m.def("host_cache_free_bytes() -> int", &omni_mega::host_cache_free_bytes);
  m.def("host_cache_clear() -> ()", &omni_mega::host_cache_clear);
}

// `import omni_mega._C` loads this library (and so runs the registrations above); it exposes no Python functions.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
