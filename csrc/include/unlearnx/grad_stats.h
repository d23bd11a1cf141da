// Gradient statistics of Linear layers without per-sample gradients in memory.
//
// For a Linear layer y = x W^T + b applied to X [B, T, d_in] with output gradients G [B, T, d_out]
// (row b of G is the gradient of sample b's own loss), the gradient of sample b's loss is the
// tile P_b = G_b^T X_b  [d_out, d_in]  (K = T). The ops built on these bodies accumulate
//   fisher      += sum_b P_b^2                 (elementwise; diagonal empirical Fisher)
//   grad_weight += sum_b P_b                   (the ordinary weight gradient, same pass)
//   norms[b]    += ||P_b||_F^2 = sum_{t,s} (G_t . G_s)(X_t . X_s)   (Gram form, cheap when T is small)
// one register tile of one P_b at a time, so no per-sample gradient is ever stored.
#pragma once
#include "unlearnx/common.h"

namespace unlearnx {

// Epilogues of the per-sample tile kernel (csrc/cpu/isa/grad_stats_isa.cpp).
enum GradTileMode : int {
  kGradTileSquare = 0,  // fisher += P_b^2 (and grad += P_b)
  kGradTileAdd = 1,     // fisher += P_b (T = 1 on squared operands: sum_b g_b^2 x_b^2; or the plain gradient)
  kGradTileNorm = 2,    // norms[b] += ||P_b||^2
};

// fisher[i] += p[i]^2 (and grad[i] += p[i] when kGrad): the square-accumulate of one tile block.
template <bool kGrad>
UNLEARNX_HD void sq_accum_span(float* __restrict__ fisher, float* __restrict__ grad,
                               const float* __restrict__ p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = p[i];
    fisher[i] += v * v;
    if constexpr (kGrad) grad[i] += v;
  }
}

// sum_i a[i] * b[i] with 16 independent fp32 partial sums (a fixed order, so the result is
// deterministic, and one that vectorizes without -ffast-math), combined in double.
UNLEARNX_HD double dot_span(const float* __restrict__ a, const float* __restrict__ b, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  for (; i < n; ++i) total += double(a[i]) * double(b[i]);
  return total;
}

}  // namespace unlearnx
