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

  // Exact k-th value (k 1-based, like torch.kthvalue; largest: k-th largest) of x or |x| over the
  // concatenation of xs (fp32/bf16/fp16, mixed), by radix select without concatenating; NaN is
  // rejected. Returns (value: 0-dim fp32, counts: int64[2] = (#beyond value, #equal value),
  // tie_limits: int64[len(xs)]). With exact, tie_limits are the per-tensor flat-index bounds below
  // which ties are kept so that exactly k elements are selected (ties kept first in list/flat
  // order); without, every tensor's numel (all ties kept).
  m.def("global_select(Tensor[] xs, int k, bool absolute, bool largest, bool exact) -> (Tensor, Tensor, Tensor)");
  // Per-tensor masks: keep <=> v beyond threshold (> if largest, < if not; |v| if absolute) or
  // (v == threshold and flat index < tie_limits[i]); NaN never kept. bool masks of each tensor's
  // shape, or 1-bit packed uint8[ceil(numel / 8)] (element j -> bit j % 8 of byte j / 8).
  m.def("threshold_masks(Tensor[] xs, Tensor threshold, Tensor tie_limits, bool absolute, bool largest, "
        "bool packed) -> Tensor[]");
  // Kept (true / set-bit) count of each mask (bool or 1-bit packed uint8): int64[len(masks)].
  m.def("mask_counts(Tensor[] masks) -> Tensor");
  // Exactly-masked restore, in place, over the whole list: where masks[i] is false,
  // params[i] <- originals[i] (0 when originals is empty) and every states[j] with
  // state_owner[j] == i <- 0 (optimizer momentum, exp_avg, exp_avg_sq...). Bit copies.
  m.def("masked_restore_(Tensor(a!)[] params, Tensor[] originals, Tensor[] masks, Tensor(b!)[] states, "
        "int[] state_owner) -> ()");
  // Per-sample squared weight gradients of a Linear layer, accumulated without writing any
  // per-sample gradient: fisher += sum_b (G_b^T X_b)^2 for X [B, T, d_in] (or [B, d_in]) and output
  // gradients G [B, T, d_out]; fisher_bias += sum_b (sum_t G_b,t)^2; grad_weight += sum_b G_b^T X_b.
  m.def(
      "linear_sq_grad_accum_(Tensor(a!) fisher, Tensor x, Tensor grad_out, Tensor(b!)? fisher_bias=None, "
      "Tensor(c!)? grad_weight=None) -> ()");
  // Per-sample squared gradient norms of a Linear layer: norms[b] += ||G_b^T X_b||^2 (+ ||sum_t G_b,t||^2
  // with bias), by the Gram form sum_{t,s} (G_t.G_s)(X_t.X_s) when 2 T^2 < d_in d_out, else tile by tile.
  m.def("linear_grad_sq_norm_accum_(Tensor(a!) norms, Tensor x, Tensor grad_out, bool bias=False) -> ()");
  // Per-token softmax statistics of logits [..., V] at labels [...] (int64), without materializing
  // log_softmax: log p(label), mu = sum_v p log p, var = sum_v p (log p)^2 - mu^2, each fp32
  // shaped like labels; 0 where labels == ignore_index.
  m.def("token_stats(Tensor logits, Tensor labels, int ignore_index=-100) -> (Tensor, Tensor, Tensor)");
  // MoE router statistics, accumulated in place: stats[g, e] += {tokens routed to e (top-k), sum gate
  // weight, sum softmax prob, sum prob^2} over tokens with flags == g + 1 (0 = ignore, 1 = forget,
  // 2 = retain); logits [T, E], flags [T] int64, stats [2, E, 4] fp32.
  m.def("moe_router_stats_(Tensor(a!) stats, Tensor logits, Tensor flags, int top_k, bool normalize_topk=True) -> ()");
  // Logit-combination decoding step (python/unlearnx/ops/logit_diff.py has the semantics): rows [B, V]
  // of target and assistant logits (fp32/bf16/fp16; assistant None only with mode 0) combined by
  // mode 0 none / 1 ULD (relative-top filter, z_t - w z_a) / 2 WHP (v_b - w ReLU(v_r - v_b)), then
  // temperature, tie-inclusive top-k / top-p, argmax or seeded Gumbel-max (counter-based noise of
  // (seed, offset + row)). Returns (tokens int64 [B], log-prob of each under the filtered
  // distribution fp32 [B]).
  m.def("logit_diff_sample(Tensor target, Tensor? assistant, int mode, float weight, float relative_top, "
        "float temperature, int top_k, float top_p, bool greedy, int seed, int offset) -> (Tensor, Tensor)");
  // log_softmax(combined logits / temperature) over V for [..., V] rows (no top-k / top-p): fp32 [..., V].
  m.def("logit_diff_logprobs(Tensor target, Tensor? assistant, int mode, float weight, float relative_top, "
        "float temperature) -> Tensor");
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
