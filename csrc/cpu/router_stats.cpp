// CPU implementation of unlearnx::moe_router_stats_ (schema in csrc/registration.cpp).
// Threads split the tokens into fixed chunks; each chunk runs the per-ISA kernel
// (csrc/cpu/isa/router_stats_isa.cpp, body in csrc/include/unlearnx/router_stats.h: one token per
// vector lane).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../checks.h"
#include "isa.h"
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

  // Fixed chunks of kRouterChunk = 1024 tokens (independent of the thread count): fp32 sums within
  // a chunk (exact counts; < 1024 terms), fp64 across chunks in chunk order -> deterministic,
  // accurate at 1e6+ tokens.
  const int64_t chunk = kRouterChunk;
  const int64_t nchunks = (T + chunk - 1) / chunk;
  const int64_t G = 2 * 4 * E;  // per chunk: group x {cnt, gate, ps, ps2} x E
  std::vector<double> part(static_cast<size_t>(nchunks) * G, 0.0);
  const void* z = logits.const_data_ptr();
  torch::stable::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> work(static_cast<size_t>(router_stats_work_floats(E, top_k))), acc(G);
    std::vector<int32_t> topi(static_cast<size_t>(top_k * kRouterMaxLanes)), order(static_cast<size_t>(chunk));
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t t0 = c * chunk, n = std::min(T, t0 + chunk) - t0;
      if (st == ScalarType::Float)
        UNLEARNX_ISA_DISPATCH(router_stats_chunk_f32, static_cast<const float*>(z) + t0 * E, fl + t0, n, E, top_k,
                              normalize_topk, work.data(), topi.data(), order.data(), acc.data());
      else
        UNLEARNX_ISA_DISPATCH(router_stats_chunk_bf16, static_cast<const bf16_bits*>(z) + t0 * E, fl + t0, n, E,
                              top_k, normalize_topk, work.data(), topi.data(), order.data(), acc.data());
      double* dst = part.data() + c * G;
      for (int64_t i = 0; i < G; ++i) dst[i] = acc[i];
    }
  });
  // part is [chunk][group][column][expert]; stats is [group][expert][column].
  float* out = static_cast<float*>(stats.mutable_data_ptr());
  for (int64_t g = 0; g < 2; ++g)
    for (int64_t col = 0; col < 4; ++col)
      for (int64_t e = 0; e < E; ++e) {
        const int64_t i = (g * 4 + col) * E + e;
        double s = 0.0;
        for (int64_t c = 0; c < nchunks; ++c) s += part[c * G + i];
        out[(g * E + e) * 4 + col] += static_cast<float>(s);
      }
}

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CPU, m) { m.impl("moe_router_stats_", TORCH_BOX(&moe_router_stats_cpu)); }

}  // namespace unlearnx
