// CPU implementation of unlearnx::token_stats (schema in csrc/registration.cpp).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "isa.h"
#include "unlearnx/token_stats.h"

namespace unlearnx {

std::tuple<Tensor, Tensor, Tensor> token_stats_cpu(Tensor logits, Tensor labels, int64_t ignore_index) {
  const ScalarType st = logits.scalar_type();
  if (st != ScalarType::Float && st != ScalarType::BFloat16 && st != ScalarType::Half)
    fail("logits must be float32, bfloat16 or float16");
  check_dtype(labels, "labels", ScalarType::Long, "int64");
  check_same_device(labels, "labels", logits, "logits");
  if (logits.dim() != labels.dim() + 1 || labels.dim() < 1)
    fail("logits must be [..., V] with labels [...] (e.g. [N, V] and [N]); got logits " + shape_str(logits) +
         " and labels " + shape_str(labels));
  for (int64_t d = 0; d < labels.dim(); ++d)
    if (logits.size(d) != labels.size(d))
      fail("labels has shape " + shape_str(labels) + " but logits has leading shape " + shape_str(logits));
  check_contiguous(logits, "logits");
  check_contiguous(labels, "labels");
  const int64_t vocab = logits.size(logits.dim() - 1);
  const int64_t rows = labels.numel();
  if (vocab == 0 && rows > 0) fail("logits has an empty vocabulary dimension");

  const int64_t* lab = static_cast<const int64_t*>(labels.const_data_ptr());
  for (int64_t r = 0; r < rows; ++r)
    if (lab[r] != ignore_index && (lab[r] < 0 || lab[r] >= vocab))
      fail("labels contains " + std::to_string(lab[r]) + ", outside [0, " + std::to_string(vocab) +
           ") and not ignore_index=" + std::to_string(ignore_index));

  std::vector<int64_t> shape;
  for (int64_t d = 0; d < labels.dim(); ++d) shape.push_back(labels.size(d));
  Tensor logp = torch::stable::new_empty(logits, shape, ScalarType::Float);
  Tensor mu = torch::stable::new_empty(logits, shape, ScalarType::Float);
  Tensor var = torch::stable::new_empty(logits, shape, ScalarType::Float);
  if (rows == 0) return {logp, mu, var};
  float* lp = static_cast<float*>(logp.mutable_data_ptr());
  float* m = static_cast<float*>(mu.mutable_data_ptr());
  float* v = static_cast<float*>(var.mutable_data_ptr());
  const void* z = logits.const_data_ptr();
  // Rows are independent; a grain of 4 rows keeps per-task overhead small even at vocab 1k.
  torch::stable::parallel_for(0, rows, 4, [&](int64_t r0, int64_t r1) {
    const int64_t n = r1 - r0;
    if (st == ScalarType::Float)
      UNLEARNX_ISA_DISPATCH(token_stats_f32, static_cast<const float*>(z) + r0 * vocab, lab + r0, n, vocab, vocab,
                            ignore_index, lp + r0, m + r0, v + r0);
    else if (st == ScalarType::BFloat16)
      UNLEARNX_ISA_DISPATCH(token_stats_bf16, static_cast<const bf16_bits*>(z) + r0 * vocab, lab + r0, n, vocab,
                            vocab, ignore_index, lp + r0, m + r0, v + r0);
    else
      UNLEARNX_ISA_DISPATCH(token_stats_f16, static_cast<const f16_bits*>(z) + r0 * vocab, lab + r0, n, vocab,
                            vocab, ignore_index, lp + r0, m + r0, v + r0);
  });
  return {logp, mu, var};
}

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CPU, m) { m.impl("token_stats", TORCH_BOX(&token_stats_cpu)); }

}  // namespace unlearnx
