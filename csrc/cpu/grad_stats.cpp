// CPU implementation of unlearnx::linear_sq_grad_accum_ and unlearnx::linear_grad_sq_norm_accum_
// (schemas in csrc/registration.cpp). The output [d_out, d_in] is cut into macro tiles, one thread
// per tile; the per-ISA tile kernel (csrc/cpu/isa/grad_stats_isa.cpp) computes every sample's
// tile in registers and squares it into F. Each element of F has one owner and a fixed order over
// samples, so results do not depend on the thread count.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <vector>

#include "../grad_stats_common.h"
#include "isa.h"
#include "unlearnx/grad_stats.h"

namespace unlearnx {
namespace {

struct Tiles {
  int64_t mc, nc, mt, nt;
  int64_t count() const { return mt * nt; }
};

// Macro tiles sized so the packed panels ((mc + nc) * K floats) stay within ~512 KiB of L2.
Tiles make_tiles(int64_t d_out, int64_t d_in, int64_t K) {
  const int64_t side = std::clamp<int64_t>((int64_t(65536) / std::max<int64_t>(K, 1)) / 32 * 32, 32, 256);
  Tiles t{std::min(side, d_out), std::min(side, d_in), 0, 0};
  t.mt = (d_out + t.mc - 1) / t.mc;
  t.nt = (d_in + t.nc - 1) / t.nc;
  return t;
}

// Runs the tile kernel over every macro tile. X [B, K, d_in], G [B, K, d_out] fp32, any strides.
void run_tiles(int mode, const Tensor& X, const Tensor& G, float* F, float* grad, std::vector<double>* partials) {
  const int64_t B = X.size(0), K = X.size(1), d_in = X.size(2), d_out = G.size(2);
  const int64_t xs[3] = {X.stride(0), X.stride(1), X.stride(2)};
  const int64_t gs[3] = {G.stride(0), G.stride(1), G.stride(2)};
  const Tiles t = make_tiles(d_out, d_in, K);
  if (partials) partials->assign(size_t(t.count() * B), 0.0);
  const float* x = static_cast<const float*>(X.const_data_ptr());
  const float* g = static_cast<const float*>(G.const_data_ptr());
  torch::stable::parallel_for(0, t.count(), 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t o0 = (k / t.nt) * t.mc, i0 = (k % t.nt) * t.nc;
      UNLEARNX_ISA_DISPATCH(grad_tile_f32, mode, x, xs, g, gs, B, K, d_in, o0, std::min(t.mc, d_out - o0), i0,
                            std::min(t.nc, d_in - i0), F, grad, partials ? partials->data() + k * B : nullptr);
    }
  });
}

// [B, d_out]: sum over T of G, the per-sample bias gradient.
Tensor per_sample_bias_grad(const Tensor& G) {
  return torch::stable::contiguous(torch::stable::sum(G, std::vector<int64_t>{1}));
}

void linear_sq_grad_accum_cpu(Tensor fisher, Tensor x, Tensor grad_out, std::optional<Tensor> fisher_bias,
                              std::optional<Tensor> grad_weight) {
  const LinearPlan p = linear_check(x, grad_out);
  check_accumulator(fisher, "fisher", x, {p.d_out, p.d_in});
  if (fisher_bias) check_accumulator(*fisher_bias, "fisher_bias", x, {p.d_out});
  if (grad_weight) check_accumulator(*grad_weight, "grad_weight", x, {p.d_out, p.d_in});
  if (p.empty()) return;
  Tensor X = as_f32_3d(x), G = as_f32_3d(grad_out);
  if (p.T == 1) {
    // A rank-1 tile squares into a rank-1 tile: sum_b (g_b x_b^T)^2 = (G^2)^T (X^2), one GEMM
    // with the samples as K (tensors viewed as one "sample" of length B).
    Tensor Xs = torch::stable::reshape(X, {1, p.B, p.d_in}), Gs = torch::stable::reshape(G, {1, p.B, p.d_out});
    Tensor Xsq = aten_call("aten::mul", "Tensor", Xs, Xs), Gsq = aten_call("aten::mul", "Tensor", Gs, Gs);
    run_tiles(kGradTileAdd, Xsq, Gsq, f32_ptr(fisher), nullptr, nullptr);
    if (grad_weight) run_tiles(kGradTileAdd, Xs, Gs, f32_ptr(*grad_weight), nullptr, nullptr);
  } else {
    run_tiles(kGradTileSquare, X, G, f32_ptr(fisher), grad_weight ? f32_ptr(*grad_weight) : nullptr, nullptr);
  }
  if (fisher_bias) {
    Tensor S = per_sample_bias_grad(G);
    const float* s = f32_ptr(S);
    float* fb = f32_ptr(*fisher_bias);
    for (int64_t b = 0; b < p.B; ++b) UNLEARNX_ISA_DISPATCH(grad_sq_accum_f32, fb, nullptr, s + b * p.d_out, p.d_out);
  }
}

void linear_grad_sq_norm_accum_cpu(Tensor norms, Tensor x, Tensor grad_out, bool bias) {
  const LinearPlan p = linear_check(x, grad_out);
  check_accumulator(norms, "norms", x, {p.B});
  if (p.B == 0 || p.T == 0) return;
  Tensor X = as_f32_3d(x), G = as_f32_3d(grad_out);
  float* out = f32_ptr(norms);
  std::vector<double> total(size_t(p.B), 0.0);
  if (!p.empty() && use_gram(p)) {
    // ||G_b^T X_b||^2 = <G_b G_b^T, X_b X_b^T>: the two [T, T] Gram matrices by batched GEMM, in
    // chunks of samples so the scratch stays bounded (2 x 16 MiB).
    constexpr int64_t kGramElems = int64_t(1) << 22;
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(p.B, kGramElems / (p.T * p.T)));
    for (int64_t b0 = 0; b0 < p.B; b0 += chunk) {
      const int64_t c = std::min(chunk, p.B - b0);
      Tensor Gc = torch::stable::narrow(G, 0, b0, c), Xc = torch::stable::narrow(X, 0, b0, c);
      Tensor A = aten_call("aten::bmm", "", Gc, torch::stable::transpose(Gc, 1, 2));
      Tensor C = aten_call("aten::bmm", "", Xc, torch::stable::transpose(Xc, 1, 2));
      const float* a = f32_ptr(A);
      const float* cc = f32_ptr(C);
      const int64_t n = p.T * p.T;
      torch::stable::parallel_for(0, c, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) total[b0 + j] += UNLEARNX_ISA_DISPATCH(grad_dot_f32, a + j * n, cc + j * n, n);
      });
    }
  } else if (!p.empty()) {
    std::vector<double> partials;
    run_tiles(kGradTileNorm, X, G, nullptr, nullptr, &partials);
    const int64_t tiles = static_cast<int64_t>(partials.size()) / p.B;
    for (int64_t k = 0; k < tiles; ++k)
      for (int64_t b = 0; b < p.B; ++b) total[b] += partials[k * p.B + b];
  }
  if (bias && p.d_out > 0) {
    Tensor S = per_sample_bias_grad(G);
    const float* s = f32_ptr(S);
    for (int64_t b = 0; b < p.B; ++b) total[b] += UNLEARNX_ISA_DISPATCH(grad_dot_f32, s + b * p.d_out, s + b * p.d_out, p.d_out);
  }
  for (int64_t b = 0; b < p.B; ++b) out[b] += static_cast<float>(total[b]);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CPU, m) {
  m.impl("linear_sq_grad_accum_", TORCH_BOX(&linear_sq_grad_accum_cpu));
  m.impl("linear_grad_sq_norm_accum_", TORCH_BOX(&linear_grad_sq_norm_accum_cpu));
}

}  // namespace unlearnx
