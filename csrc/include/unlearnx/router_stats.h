// Kernel body of unlearnx::moe_router_stats_ (torch-free; see python/unlearnx/ops/router_stats.py).
//
// For one token with router logits z [E] and top-k: p = softmax(z) (fp32), the k largest p_e
// (ties -> lower expert index), gate weight w_e = p_e / sum_{top-k} p (normalize) or p_e, and the
// per-expert accumulation acc[e*4 + {0,1,2,3}] += {1[e in top-k], w_e 1[e in top-k], p_e, p_e^2}.
#pragma once
#include "common.h"

namespace unlearnx {

// p: E floats of scratch; sel: E bytes of scratch; acc: [E, 4] doubles (one chunk's partial sums).
template <typename T>
UNLEARNX_HD void router_stats_token(const T* z, int64_t E, int64_t k, bool normalize, float* p, unsigned char* sel,
                                    double* acc) {
  float m = load_f32(z);
  for (int64_t e = 1; e < E; ++e) m = fmaxf(m, load_f32(z + e));
  float s = 0.f;
  for (int64_t e = 0; e < E; ++e) {
    p[e] = expf(load_f32(z + e) - m);
    s += p[e];
    sel[e] = 0;
  }
  const float inv = 1.f / s;
  for (int64_t e = 0; e < E; ++e) p[e] *= inv;
  // k passes of a strict-greater argmax: the first maximal index wins a tie.
  float topsum = 0.f;
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e)
      if (!sel[e] && (best < 0 || p[e] > p[best])) best = e;
    sel[best] = 1;
    topsum += p[best];
  }
  const float scale = normalize ? 1.f / topsum : 1.f;
  for (int64_t e = 0; e < E; ++e) {
    double* a = acc + e * 4;
    if (sel[e]) {
      a[0] += 1.0;
      a[1] += double(p[e] * scale);
    }
    a[2] += double(p[e]);
    a[3] += double(p[e]) * double(p[e]);
  }
}

}  // namespace unlearnx
