// Validation shared by the CPU and CUDA implementations of unlearnx::ssd_dampen_.
#pragma once
#include <torch/csrc/stable/ops.h>

#include "checks.h"

namespace unlearnx {

struct SsdPlan {
  std::vector<int64_t> numel;
  int64_t total = 0;
  bool bf16 = false;
};

inline SsdPlan ssd_check_and_plan(const std::vector<Tensor>& params, const std::vector<Tensor>& forget_importance,
                                  const std::vector<Tensor>& full_importance) {
  check_same_len(params, "params", forget_importance, "forget_importance");
  check_same_len(params, "params", full_importance, "full_importance");
  SsdPlan plan;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string p = item("params", i), f = item("forget_importance", i), d = item("full_importance", i);
    const ScalarType st = params[i].scalar_type();
    if (st != ScalarType::Float && st != ScalarType::BFloat16) fail(p + " must be float32 or bfloat16");
    if (i == 0) plan.bf16 = st == ScalarType::BFloat16;
    else if (plan.bf16 != (st == ScalarType::BFloat16)) fail(p + " has a different dtype than params[0]; all params must share one dtype");
    check_dtype(forget_importance[i], f, ScalarType::Float, "float32");
    check_dtype(full_importance[i], d, ScalarType::Float, "float32");
    check_same_shape(params[i], p, forget_importance[i], f);
    check_same_shape(params[i], p, full_importance[i], d);
    check_same_device(params[i], p, params[0], "params[0]");
    check_same_device(forget_importance[i], f, params[0], "params[0]");
    check_same_device(full_importance[i], d, params[0], "params[0]");
    check_contiguous(params[i], p);
    check_contiguous(forget_importance[i], f);
    check_contiguous(full_importance[i], d);
    plan.numel.push_back(params[i].numel());
    plan.total += params[i].numel();
  }
  return plan;
}

// The selected-count output: a 0-dim int64 zero on the params' device (CPU for an empty list).
inline Tensor ssd_count_tensor(const std::vector<Tensor>& params) {
  if (params.empty()) {
    Tensor t = torch::stable::empty({}, ScalarType::Long, std::nullopt,
                                    torch::stable::Device(torch::headeronly::DeviceType::CPU));
    return torch::stable::zero_(t);
  }
  return torch::stable::new_zeros(params[0], {}, ScalarType::Long);
}

}  // namespace unlearnx
