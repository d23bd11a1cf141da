// Argument validation and small helpers shared by the implementations of the Linear gradient
// statistics ops (unlearnx::linear_sq_grad_accum_, unlearnx::linear_grad_sq_norm_accum_).
#pragma once
#include <torch/csrc/stable/ops.h>

#include <array>
#include <initializer_list>
#include <string>

#include "checks.h"

namespace unlearnx {

// Calls an ATen op through the stable dispatcher and returns its first output.
template <typename... Args>
inline Tensor aten_call(const char* name, const char* overload, const Args&... args) {
  std::array<StableIValue, sizeof...(Args)> stack{torch::stable::detail::from(args)...};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

struct LinearPlan {
  int64_t B = 0, T = 0, d_in = 0, d_out = 0;
  bool empty() const { return B == 0 || T == 0 || d_in == 0 || d_out == 0; }
};

inline LinearPlan linear_check(const Tensor& x, const Tensor& grad_out) {
  if (x.dim() != 2 && x.dim() != 3) fail("x must be [B, d_in] or [B, T, d_in], got shape " + shape_str(x));
  if (grad_out.dim() != x.dim() || grad_out.size(0) != x.size(0) || (x.dim() == 3 && grad_out.size(1) != x.size(1)))
    fail("grad_out has shape " + shape_str(grad_out) + " but x has shape " + shape_str(x) +
         " (both [B, d] or both [B, T, d] with the same B and T)");
  const ScalarType st = x.scalar_type();
  if (st != ScalarType::Float && st != ScalarType::BFloat16) fail("x must be float32 or bfloat16");
  if (grad_out.scalar_type() != st) fail("grad_out must have the dtype of x");
  check_same_device(grad_out, "grad_out", x, "x");
  LinearPlan p;
  p.B = x.size(0);
  p.T = x.dim() == 3 ? x.size(1) : 1;
  p.d_in = x.size(x.dim() - 1);
  p.d_out = grad_out.size(grad_out.dim() - 1);
  return p;
}

// An fp32 accumulator argument of exactly `shape`, contiguous, on the device of x.
inline void check_accumulator(const Tensor& t, const char* name, const Tensor& x, std::initializer_list<int64_t> shape) {
  check_dtype(t, name, ScalarType::Float, "float32");
  check_same_device(t, name, x, "x");
  bool ok = t.dim() == static_cast<int64_t>(shape.size());
  int64_t d = 0;
  for (int64_t s : shape) ok = ok && t.size(d++) == s;
  if (!ok) {
    std::string want = "[";
    for (int64_t s : shape) want += (want.size() > 1 ? ", " : "") + std::to_string(s);
    fail(std::string(name) + " has shape " + shape_str(t) + " but must be " + want + "]");
  }
  check_contiguous(t, name);
}

// x or grad_out as an fp32 [B, T, d] tensor; strides are kept (a copy only for bf16).
inline Tensor as_f32_3d(const Tensor& t) {
  Tensor r = t.dim() == 2 ? torch::stable::reshape(t, {t.size(0), 1, t.size(1)}) : t;
  if (r.scalar_type() != ScalarType::Float) r = torch::stable::to(r, ScalarType::Float);
  return r;
}

inline float* f32_ptr(const Tensor& t) { return static_cast<float*>(t.mutable_data_ptr()); }

// 2 T^2 < d_in d_out: the two [T, T] Gram matrices are cheaper than the [d_out, d_in] tile.
inline bool use_gram(const LinearPlan& p) { return 2.0 * double(p.T) * double(p.T) < double(p.d_in) * double(p.d_out); }

}  // namespace unlearnx
