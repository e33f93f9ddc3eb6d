// Every omni_mega op schema, in one readable list. Backend files (csrc/<op>/<op>_cpu.cpp, <op>_cuda.cu) only
// register implementations with TORCH_LIBRARY_IMPL; the Python side (omni_mega/ops/<op>.py) adds fake tensors
// and autograd rules.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(omni_mega, m) {
  // grid_thw int32/int64 [N, 3] -> (pos int32 [T, 2] (row, col), cu_seqlens int32 [sum_i t_i + 1]).
  m.def("vision_positions(Tensor grid_thw, int merge_size) -> (Tensor, Tensor)");
  // [rope_2d schemas]
  // [vet schemas]
  // [pack_images schemas]
  // data uint8 [bytes] (HWC images back to back), sizes int32/int64 [N, 2] (h, w), offsets int32/int64 [N] ->
  // pixel_values out_dtype [T, C*tps*p*p] in Qwen2-VL token/feature order, C = len(mean).
  m.def("pack_images(Tensor data, Tensor sizes, Tensor offsets, int patch_size, int merge_size, "
        "int temporal_patch_size, float[] mean, float[] std, ScalarType out_dtype) -> Tensor");
}

// `import omni_mega._C` loads this library (and so runs the registrations above); it exposes no Python functions.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
