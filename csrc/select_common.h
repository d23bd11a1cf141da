// Validation and planning shared by the CPU and CUDA implementations of the selection ops
// (unlearnx::global_select, threshold_masks, mask_counts, masked_restore_).
#pragma once
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

#include "checks.h"

namespace unlearnx {

// Spans of at most kSelectChunk elements of one tensor: the unit of parallel work, the unit of
// candidate offsets (uint16) and a multiple of 8 so packed-mask bytes never straddle two spans.
constexpr int64_t kSelectChunk = int64_t(1) << 16;

inline int value_dtype_code(ScalarType st) {
  switch (st) {
    case ScalarType::Float: return 0;
    case ScalarType::BFloat16: return 1;
    case ScalarType::Half: return 2;
    default: return -1;
  }
}

inline int64_t element_size(ScalarType st) {
  switch (st) {
    case ScalarType::Half:
    case ScalarType::BFloat16: return 2;
    case ScalarType::Float: return 4;
    case ScalarType::Double: return 8;
    default: return 0;
  }
}

struct ListPlan {
  std::vector<int64_t> numel;
  std::vector<int> dtype;
  int64_t total = 0;
  // span table: tensor index and first element of every span, in list/flat order
  std::vector<int64_t> span_tensor, span_begin;

  void add_spans() {
    for (size_t t = 0; t < numel.size(); ++t)
      for (int64_t b = 0; b < numel[t]; b += kSelectChunk) {
        span_tensor.push_back(static_cast<int64_t>(t));
        span_begin.push_back(b);
      }
  }
  int64_t span_len(size_t s) const { return std::min(kSelectChunk, numel[span_tensor[s]] - span_begin[s]); }
};

// xs: fp32 / bf16 / fp16 (mixed allowed), contiguous, one device, at least one tensor.
inline ListPlan select_check_values(const std::vector<Tensor>& xs, const char* name) {
  if (xs.empty()) fail(std::string(name) + " must hold at least one tensor");
  ListPlan plan;
  for (size_t i = 0; i < xs.size(); ++i) {
    const std::string n = item(name, i);
    const int code = value_dtype_code(xs[i].scalar_type());
    if (code < 0) fail(n + " must be float32, bfloat16 or float16");
    check_same_device(xs[i], n, xs[0], item(name, 0));
    check_contiguous(xs[i], n);
    plan.dtype.push_back(code);
    plan.numel.push_back(xs[i].numel());
    plan.total += xs[i].numel();
  }
  plan.add_spans();
  return plan;
}

inline void select_check_k(int64_t k, int64_t total) {
  if (total == 0) fail("xs holds no elements; the k-th value of an empty list is undefined");
  if (k < 1 || k > total)
    fail("k must be in [1, " + std::to_string(total) + "] (1-based, like torch.kthvalue), got " + std::to_string(k));
}

inline void masks_check_threshold(const std::vector<Tensor>& xs, const Tensor& threshold, const Tensor& tie_limits) {
  if (threshold.numel() != 1 || threshold.dim() != 0) fail("threshold must be a 0-dim tensor");
  check_dtype(threshold, "threshold", ScalarType::Float, "float32");
  check_same_device(threshold, "threshold", xs[0], "xs[0]");
  check_dtype(tie_limits, "tie_limits", ScalarType::Long, "int64");
  if (tie_limits.dim() != 1 || tie_limits.size(0) != static_cast<int64_t>(xs.size()))
    fail("tie_limits must have shape [" + std::to_string(xs.size()) + "] (one limit per tensor of xs), got " +
         shape_str(tie_limits));
  check_same_device(tie_limits, "tie_limits", xs[0], "xs[0]");
  check_contiguous(tie_limits, "tie_limits");
}

inline int64_t packed_bytes(int64_t n) { return (n + 7) / 8; }

// A mask is bool with the tensor's shape, or uint8 holding ceil(numel / 8) bytes (1-bit packed,
// element j -> bit j % 8 of byte j / 8, padding bits zero). Returns true for a packed mask.
inline bool check_mask(const Tensor& m, const std::string& mn, const Tensor& ref, const std::string& rn) {
  check_same_device(m, mn, ref, rn);
  check_contiguous(m, mn);
  if (m.scalar_type() == ScalarType::Bool) {
    check_same_shape(ref, rn, m, mn);
    return false;
  }
  if (m.scalar_type() == ScalarType::Byte) {
    if (m.numel() != packed_bytes(ref.numel()))
      fail(mn + " is a packed (uint8) mask of " + std::to_string(m.numel()) + " bytes but " + rn + " has " +
           std::to_string(ref.numel()) + " elements (needs " + std::to_string(packed_bytes(ref.numel())) + ")");
    return true;
  }
  fail(mn + " must be bool (same shape) or uint8 (1-bit packed)");
}

struct RestorePlan {
  ListPlan list;
  std::vector<bool> packed;
  std::vector<int> elem;                       // element size of each param
  std::vector<std::vector<int64_t>> states_of;  // state indices owned by each param
};

inline RestorePlan restore_check(const std::vector<Tensor>& params, const std::vector<Tensor>& originals,
                                 const std::vector<Tensor>& masks, const std::vector<Tensor>& states,
                                 const std::vector<int64_t>& state_owner) {
  check_same_len(params, "params", masks, "masks");
  if (!originals.empty()) check_same_len(params, "params", originals, "originals");
  if (state_owner.size() != states.size())
    fail("state_owner has " + std::to_string(state_owner.size()) + " entries but states has " +
         std::to_string(states.size()));
  RestorePlan plan;
  plan.states_of.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string p = item("params", i);
    const int64_t es = element_size(params[i].scalar_type());
    if (es == 0) fail(p + " must be float16, bfloat16, float32 or float64");
    check_same_device(params[i], p, params[0], "params[0]");
    check_contiguous(params[i], p);
    if (!originals.empty()) {
      const std::string o = item("originals", i);
      if (originals[i].scalar_type() != params[i].scalar_type()) fail(o + " must have the dtype of " + p);
      check_same_shape(params[i], p, originals[i], o);
      check_same_device(originals[i], o, params[0], "params[0]");
      check_contiguous(originals[i], o);
    }
    plan.packed.push_back(check_mask(masks[i], item("masks", i), params[i], p));
    plan.elem.push_back(static_cast<int>(es));
    plan.list.numel.push_back(params[i].numel());
    plan.list.total += params[i].numel();
  }
  for (size_t j = 0; j < states.size(); ++j) {
    const std::string s = item("states", j);
    const int64_t owner = state_owner[j];
    if (owner < 0 || owner >= static_cast<int64_t>(params.size()))
      fail("state_owner[" + std::to_string(j) + "] = " + std::to_string(owner) + " is not a params index");
    if (element_size(states[j].scalar_type()) == 0) fail(s + " must be float16, bfloat16, float32 or float64");
    if (states[j].numel() != params[owner].numel())
      fail(s + " has " + std::to_string(states[j].numel()) + " elements but its owner params[" +
           std::to_string(owner) + "] has " + std::to_string(params[owner].numel()));
    check_same_device(states[j], s, params[0], "params[0]");
    check_contiguous(states[j], s);
    plan.states_of[owner].push_back(static_cast<int64_t>(j));
  }
  plan.list.add_spans();
  return plan;
}

}  // namespace unlearnx
