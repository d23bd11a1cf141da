// CPU implementation of unlearnx::logit_diff_sample and unlearnx::logit_diff_logprobs (schemas in
// csrc/registration.cpp; kernel bodies in csrc/include/unlearnx/logit_diff.h).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "isa.h"
#include "unlearnx/logit_diff.h"

namespace unlearnx {
namespace {

int dtype_code(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case ScalarType::Float: return 0;
    case ScalarType::BFloat16: return 1;
    case ScalarType::Half: return 2;
    default: fail(std::string(name) + " must be float32, bfloat16 or float16");
  }
}

// Checks shared by both ops; returns the dtype code and fills the combination parameters.
int check_common(const Tensor& target, const std::optional<Tensor>& assistant, int64_t mode, double weight,
                 double relative_top, double temperature, LogitDiffParams& p) {
  const int code = dtype_code(target, "target");
  if (target.dim() < 1 || target.size(target.dim() - 1) == 0)
    fail("target must be [..., V] with V > 0, got shape " + shape_str(target));
  check_contiguous(target, "target");
  if (mode < 0 || mode > 2) fail("mode must be 0 (none), 1 (uld) or 2 (whp), got " + std::to_string(mode));
  if (assistant.has_value()) {
    const Tensor& a = *assistant;
    if (a.scalar_type() != target.scalar_type()) fail("assistant must have the dtype of target");
    check_same_device(a, "assistant", target, "target");
    check_same_shape(target, "target", a, "assistant");
    check_contiguous(a, "assistant");
  } else if (mode != 0) {
    fail("mode " + std::to_string(mode) + " needs assistant logits (pass mode 0 to use target alone)");
  }
  if (!std::isfinite(weight)) fail("weight must be finite");
  if (!(relative_top > 0.0 && relative_top <= 1.0)) fail("relative_top must be in (0, 1]");
  if (!(temperature > 0.0) || !std::isfinite(temperature)) fail("temperature must be finite and > 0");
  const int64_t vocab = target.size(target.dim() - 1);
  p.mode = assistant.has_value() ? int(mode) : kLdNone;
  p.weight = float(weight);
  const double k = std::floor(relative_top * double(vocab));
  p.filter_k = k < 1.0 ? 1 : int64_t(k);
  p.log_r = float(std::log(relative_top));
  p.temperature = float(temperature);
  p.top_k = 0;
  p.top_p = 1.0;
  p.greedy = true;
  p.seed = 0;
  p.offset = 0;
  return code;
}

}  // namespace

std::tuple<Tensor, Tensor> logit_diff_sample_cpu(Tensor target, std::optional<Tensor> assistant, int64_t mode,
                                                 double weight, double relative_top, double temperature,
                                                 int64_t top_k, double top_p, bool greedy, int64_t seed,
                                                 int64_t offset) {
  LogitDiffParams p;
  const int code = check_common(target, assistant, mode, weight, relative_top, temperature, p);
  if (target.dim() != 2) fail("target must be [B, V] (one row per sequence), got shape " + shape_str(target));
  if (top_k < 0) fail("top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
  if (!(top_p > 0.0 && top_p <= 1.0)) fail("top_p must be in (0, 1]");
  if (offset < 0) fail("offset must be >= 0, got " + std::to_string(offset));
  p.top_k = top_k;
  p.top_p = top_p;
  p.greedy = greedy;
  p.seed = uint64_t(seed);
  p.offset = uint64_t(offset);
  const int64_t rows = target.size(0), vocab = target.size(1);
  if (vocab > int64_t(UINT32_MAX)) fail("target has more than 2^32 - 1 vocabulary entries");
  Tensor tokens = torch::stable::new_empty(target, {rows}, ScalarType::Long);
  Tensor logprob = torch::stable::new_empty(target, {rows}, ScalarType::Float);
  if (rows == 0) return {tokens, logprob};
  const char* zt = static_cast<const char*>(target.const_data_ptr());
  const char* za = assistant.has_value() && p.mode != kLdNone ? static_cast<const char*>(assistant->const_data_ptr())
                                                               : nullptr;
  const int64_t row_bytes = vocab * int64_t(target.element_size());
  int64_t* tok = static_cast<int64_t*>(tokens.mutable_data_ptr());
  float* lp = static_cast<float*>(logprob.mutable_data_ptr());
  // One row is already V elements of work; rows are independent.
  torch::stable::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    UNLEARNX_ISA_DISPATCH(logit_diff_sample_rows, zt + r0 * row_bytes, za ? za + r0 * row_bytes : nullptr, code, r0,
                          r1 - r0, vocab, p, tok + r0, lp + r0);
  });
  return {tokens, logprob};
}

Tensor logit_diff_logprobs_cpu(Tensor target, std::optional<Tensor> assistant, int64_t mode, double weight,
                               double relative_top, double temperature) {
  LogitDiffParams p;
  const int code = check_common(target, assistant, mode, weight, relative_top, temperature, p);
  std::vector<int64_t> shape;
  for (int64_t d = 0; d < target.dim(); ++d) shape.push_back(target.size(d));
  Tensor out = torch::stable::new_empty(target, shape, ScalarType::Float);
  const int64_t vocab = target.size(target.dim() - 1);
  const int64_t rows = target.numel() / vocab;
  if (rows == 0) return out;
  const char* zt = static_cast<const char*>(target.const_data_ptr());
  const char* za = assistant.has_value() && p.mode != kLdNone ? static_cast<const char*>(assistant->const_data_ptr())
                                                               : nullptr;
  const int64_t row_bytes = vocab * int64_t(target.element_size());
  float* o = static_cast<float*>(out.mutable_data_ptr());
  torch::stable::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    UNLEARNX_ISA_DISPATCH(logit_diff_logprobs_rows, zt + r0 * row_bytes, za ? za + r0 * row_bytes : nullptr, code,
                          r1 - r0, vocab, p, o + r0 * vocab);
  });
  return out;
}

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CPU, m) {
  m.impl("logit_diff_sample", TORCH_BOX(&logit_diff_sample_cpu));
  m.impl("logit_diff_logprobs", TORCH_BOX(&logit_diff_logprobs_cpu));
}

}  // namespace unlearnx
