// `import omni_mega._C_cuda` loads the CUDA kernels' TORCH_LIBRARY_IMPL registrations. Import omni_mega._C first:
// it defines the schemas.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
