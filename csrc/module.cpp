// The pybind11 module paraformer_ext._C. Importing it also runs the static TORCH_LIBRARY registrations
// of every op (registration.cpp, *_cpu.cpp and, when built, *_cuda.cu).
#include <pybind11/pybind11.h>
#include <torch/extension.h>

#include <string>

namespace py = pybind11;

#ifndef PARAFORMER_EXT_CXX_FLAGS
#define PARAFORMER_EXT_CXX_FLAGS ""
#endif

static py::dict build_info() {
  py::dict info;
  info["torch_version"] = std::string(PARAFORMER_EXT_TORCH_VERSION);
  info["cpu"] = true;
  info["cxx_flags"] = std::string(PARAFORMER_EXT_CXX_FLAGS);
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#ifdef PARAFORMER_EXT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(PARAFORMER_EXT_CUDA_ARCHS);
  info["cuda_compiler_version"] = std::string(PARAFORMER_EXT_CUDA_VERSION);
#else
  info["cuda"] = false;
  info["cuda_archs"] = py::none();
  info["cuda_compiler_version"] = py::none();
#endif
  return info;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "paraformer_ext compiled kernels (ops are registered under torch.ops.paraformer_ext)";
  m.def("build_info", &build_info, "What was compiled: torch version, CPU flags, CUDA and its archs");
}
