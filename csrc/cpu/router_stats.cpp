// CPU implementation of unlearnx::moe_router_stats_ (schema in csrc/registration.cpp).
// Not vectorized per ISA: a token's work is E exps plus k scans of E values (E <= a few hundred),
// so the op is bound by the one read of the logits; threads split the tokens.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../checks.h"
#include "unlearnx/router_stats.h"

namespace unlearnx {

void moe_router_stats_cpu(Tensor stats, Tensor logits, Tensor flags, int64_t top_k, bool normalize_topk) {
  const ScalarType st = logits.scalar_type();
  if (st != ScalarType::Float && st != ScalarType::BFloat16) fail("logits must be float32 or bfloat16");
  check_dtype(stats, "stats", ScalarType::Float, "float32");
  check_dtype(flags, "flags", ScalarType::Long, "int64");
  check_same_device(flags, "flags", logits, "logits");
  check_same_device(stats, "stats", logits, "logits");
  if (logits.dim() != 2) fail("logits must be [T, E]; got " + shape_str(logits));
  const int64_t T = logits.size(0), E = logits.size(1);
  if (flags.dim() != 1 || flags.size(0) != T)
    fail("flags must be [T] = [" + std::to_string(T) + "]; got " + shape_str(flags));
  if (stats.dim() != 3 || stats.size(0) != 2 || stats.size(1) != E || stats.size(2) != 4)
    fail("stats must be [2, E, 4] = [2, " + std::to_string(E) + ", 4]; got " + shape_str(stats));
  if (E < 1) fail("logits has no experts (E = 0)");
  if (top_k < 1 || top_k > E)
    fail("top_k must be in [1, E = " + std::to_string(E) + "]; got " + std::to_string(top_k));
  check_contiguous(logits, "logits");
  check_contiguous(flags, "flags");
  check_contiguous(stats, "stats");
  const int64_t* fl = static_cast<const int64_t*>(flags.const_data_ptr());
  for (int64_t t = 0; t < T; ++t)
    if (fl[t] < 0 || fl[t] > 2)
      fail("flags contains " + std::to_string(fl[t]) + " at token " + std::to_string(t) +
           "; allowed: 0 (ignore), 1 (forget), 2 (retain)");
  if (T == 0) return;

  // Fixed chunking (independent of the thread count) with fp64 partials summed in chunk order:
  // the result is deterministic and exact to fp32 rounding of the final add.
  const int64_t chunk = 2048;
  const int64_t nchunks = (T + chunk - 1) / chunk;
  std::vector<double> part(static_cast<size_t>(nchunks) * 2 * E * 4, 0.0);
  const void* z = logits.const_data_ptr();
  torch::stable::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> p(E);
    std::vector<unsigned char> sel(E);
    for (int64_t c = c0; c < c1; ++c) {
      double* acc = part.data() + c * 2 * E * 4;
      for (int64_t t = c * chunk, t1 = std::min(T, (c + 1) * chunk); t < t1; ++t) {
        if (fl[t] == 0) continue;
        double* a = acc + (fl[t] - 1) * E * 4;
        if (st == ScalarType::Float)
          router_stats_token(static_cast<const float*>(z) + t * E, E, top_k, normalize_topk, p.data(), sel.data(), a);
        else
          router_stats_token(static_cast<const bf16_bits*>(z) + t * E, E, top_k, normalize_topk, p.data(), sel.data(),
                             a);
      }
    }
  });
  float* out = static_cast<float*>(stats.mutable_data_ptr());
  for (int64_t i = 0; i < 2 * E * 4; ++i) {
    double s = 0.0;
    for (int64_t c = 0; c < nchunks; ++c) s += part[c * 2 * E * 4 + i];
    out[i] += static_cast<float>(s);
  }
}

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CPU, m) { m.impl("moe_router_stats_", TORCH_BOX(&moe_router_stats_cpu)); }

}  // namespace unlearnx
