// The one place every unlearnx op schema is defined (namespace `unlearnx`). Kernels register
// their implementations per dispatch key next to their code (csrc/cpu, csrc/cuda); the Python
// side (python/unlearnx/ops) adds fake kernels, autograd and the typed wrappers.
//
// This file also holds the Python module init: `import unlearnx._C` loads this shared library,
// whose static initializers register the schemas and kernels with the dispatcher. The module is
// built for the limited C API (abi3) and against the LibTorch stable ABI, so one binary serves
// every CPython >= 3.10 and torch >= 2.10.
#include <Python.h>
#include <torch/csrc/stable/library.h>

#include <string>

#include "cpu/isa.h"

#ifndef UNLEARNX_VERSION
#define UNLEARNX_VERSION "0.0.0"
#endif
#ifndef UNLEARNX_CUDA_ARCHS
#define UNLEARNX_CUDA_ARCHS ""
#endif

STABLE_TORCH_LIBRARY(unlearnx, m) {
  // Selective synaptic dampening over a whole parameter list, in place: where
  // I_f > alpha * I_D, theta *= min(lam * I_D / I_f, 1). Returns the selected count (0-dim
  // int64 on the params' device, so CUDA callers need no host sync).
  m.def(
      "ssd_dampen_(Tensor(a!)[] params, Tensor[] forget_importance, Tensor[] full_importance, "
      "float alpha, float lam) -> Tensor");
  // Per-token softmax statistics of logits [..., V] at labels [...] (int64), without materializing
  // log_softmax: log p(label), mu = sum_v p log p, var = sum_v p (log p)^2 - mu^2, each fp32
  // shaped like labels; 0 where labels == ignore_index.
  m.def("token_stats(Tensor logits, Tensor labels, int ignore_index=-100) -> (Tensor, Tensor, Tensor)");
}

namespace {

PyObject* build_info(PyObject*, PyObject*) {
  std::string isas;
  for (const auto& s : unlearnx::cpu::compiled_isas()) isas += (isas.empty() ? "\"" : ", \"") + s + "\"";
  std::string json = std::string("{\"version\": \"") + UNLEARNX_VERSION + "\", \"torch_target\": \"2.10\", " +
                     "\"cpu_isas\": [" + isas + "], \"cpu_isa_active\": \"" +
                     unlearnx::cpu::isa_name(unlearnx::cpu::active_isa()) + "\", " +
#ifdef UNLEARNX_WITH_CUDA
                     "\"cuda\": true, " +
#else
                     "\"cuda\": false, " +
#endif
                     "\"cuda_archs\": \"" + UNLEARNX_CUDA_ARCHS + "\"}";
  return PyUnicode_FromString(json.c_str());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "JSON: version, compiled CPU ISAs, CUDA archs."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "unlearnx native ops (torch.ops.unlearnx.*)", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
