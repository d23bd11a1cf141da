// CPU implementation of unlearnx::ssd_dampen_ (schema in csrc/registration.cpp).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <atomic>

#include "../checks.h"
#include "isa.h"
#include "../ssd_common.h"

namespace unlearnx {

Tensor ssd_dampen_cpu(std::vector<Tensor> params, std::vector<Tensor> forget_importance,
                      std::vector<Tensor> full_importance, double alpha, double lam) {
  const SsdPlan plan = ssd_check_and_plan(params, forget_importance, full_importance);
  Tensor count = ssd_count_tensor(params);
  if (plan.total == 0) return count;
  const float a = static_cast<float>(alpha), l = static_cast<float>(lam);

  // Work is cut into fixed chunks of the concatenated element range so one huge tensor and many
  // small ones parallelize alike; a chunk never spans two tensors.
  constexpr int64_t kChunk = 1 << 16;
  std::vector<int64_t> chunk_tensor, chunk_begin;
  for (size_t t = 0; t < params.size(); ++t)
    for (int64_t b = 0; b < plan.numel[t]; b += kChunk) {
      chunk_tensor.push_back(static_cast<int64_t>(t));
      chunk_begin.push_back(b);
    }
  std::atomic<int64_t> total{0};
  torch::stable::parallel_for(0, static_cast<int64_t>(chunk_tensor.size()), 1, [&](int64_t c0, int64_t c1) {
    int64_t local = 0;
    for (int64_t c = c0; c < c1; ++c) {
      const size_t t = static_cast<size_t>(chunk_tensor[c]);
      const int64_t b = chunk_begin[c], n = std::min(kChunk, plan.numel[t] - b);
      const float* f = static_cast<const float*>(forget_importance[t].const_data_ptr()) + b;
      const float* d = static_cast<const float*>(full_importance[t].const_data_ptr()) + b;
      if (plan.bf16)
        local += UNLEARNX_ISA_DISPATCH(ssd_dampen_bf16, static_cast<bf16_bits*>(params[t].mutable_data_ptr()) + b, f, d, n, a, l);
      else
        local += UNLEARNX_ISA_DISPATCH(ssd_dampen_f32, static_cast<float*>(params[t].mutable_data_ptr()) + b, f, d, n, a, l);
    }
    total.fetch_add(local, std::memory_order_relaxed);
  });
  *static_cast<int64_t*>(count.mutable_data_ptr()) = total.load();
  return count;
}

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CPU, m) { m.impl("ssd_dampen_", TORCH_BOX(&ssd_dampen_cpu)); }

}  // namespace unlearnx
