// The library's own op (cuda_version) and the Python module stub: `import plstm_graph._C`
// only needs a module object, loading the shared library runs the static registrations of
// the op schemas (ops/*.cpp) and of the kernels (cpu/*.cpp, cuda/*.cu).
#include <Python.h>

#include <torch/library.h>

#include <cstdint>

#ifdef WITH_CUDA
namespace plstm_graph {
int64_t cuda_runtime_version();  // defined in cuda/scan_kernel.cu
}
#endif

namespace plstm_graph {
namespace {

int64_t cuda_version() {
#ifdef WITH_CUDA
  return cuda_runtime_version();
#else
  return -1;
#endif
}

}  // namespace
}  // namespace plstm_graph

TORCH_LIBRARY(plstm_graph, m) {
  // The CUDA runtime version the library was built with (e.g. 12040), or -1 without CUDA.
  m.def("cuda_version() -> int", &plstm_graph::cuda_version);
}

static struct PyModuleDef plstm_graph_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                                nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&plstm_graph_module); }
