// Kernel body of unlearnx::moe_router_stats_ (torch-free; see python/unlearnx/ops/router_stats.py).
//
// For one token with router logits z [E] and top-k: p = softmax(z) (fp32), the k largest p_e
// (ties -> lower expert index), gate weight w_e = p_e / sum_{top-k} p (normalize) or p_e, and the
// per-expert sums cnt[e] += 1[e in top-k], gate[e] += w_e 1[e in top-k], ps[e] += p_e, ps2[e] += p_e^2
// (structure-of-arrays so the dense loops vectorize).
#pragma once
#include "common.h"

namespace unlearnx {

// p: E floats of scratch; topv/topi: k slots of scratch; cnt, gate, ps, ps2: E floats each.
template <typename T>
UNLEARNX_HD void router_stats_token(const T* z, int64_t E, int64_t k, bool normalize, float* p, float* topv,
                                    int64_t* topi, float* cnt, float* gate, float* ps, float* ps2) {
  float m = load_f32(z);
  for (int64_t e = 1; e < E; ++e) m = fmaxf(m, load_f32(z + e));
  float s = 0.f;
  for (int64_t e = 0; e < E; ++e) {
    p[e] = expf(load_f32(z + e) - m);
    s += p[e];
  }
  const float inv = 1.f / s;
  for (int64_t e = 0; e < E; ++e) {
    p[e] *= inv;
    ps[e] += p[e];
    ps2[e] += p[e] * p[e];
  }
  // Top-k by insertion into a descending list; a strict > keeps the earlier (lower) index on ties.
  for (int64_t j = 0; j < k; ++j) topv[j] = -1.f;
  for (int64_t e = 0; e < E; ++e) {
    const float v = p[e];
    if (!(v > topv[k - 1])) continue;
    int64_t j = k - 1;
    while (j > 0 && v > topv[j - 1]) {
      topv[j] = topv[j - 1];
      topi[j] = topi[j - 1];
      --j;
    }
    topv[j] = v;
    topi[j] = e;
  }
  float topsum = 0.f;
  for (int64_t j = 0; j < k; ++j) topsum += topv[j];
  const float scale = normalize ? 1.f / topsum : 1.f;
  for (int64_t j = 0; j < k; ++j) {
    cnt[topi[j]] += 1.f;
    gate[topi[j]] += topv[j] * scale;
  }
}

}  // namespace unlearnx
