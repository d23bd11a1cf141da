// Selective synaptic dampening (Foster et al., 2024, "Fast Machine Unlearning Without Retraining
// Through Selective Synaptic Dampening"), one element at a time:
//   selected  <=>  I_f > alpha * I_D
//   theta    <-  theta * min(lambda * I_D / I_f, 1)   where selected (never amplifies)
// Unselected elements are not stored to, so untouched cache lines are never written back.
#pragma once
#include "unlearnx/common.h"

namespace unlearnx {

UNLEARNX_HD bool ssd_selected(float i_f, float i_d, float alpha) { return i_f > alpha * i_d; }

// min(lambda * I_D / I_f, 1), written as a compare-select so it maps to one vminps (a libm fminf
// call would block vectorization); a NaN ratio gives 1, i.e. no change.
UNLEARNX_HD float ssd_factor(float i_f, float i_d, float lambda) {
  const float r = lambda * i_d / i_f;
  return r < 1.0f ? r : 1.0f;
}

// kConditionalStore: store only selected elements (AVX-512 masked stores leave untouched cache
// lines clean). Without masked stores (SSE/AVX2) a conditional store blocks vectorization, so
// every element is stored, unselected ones with their original bits.
template <bool kConditionalStore, typename T>
UNLEARNX_HD int64_t ssd_dampen_span(T* __restrict__ theta, const float* __restrict__ i_f,
                                    const float* __restrict__ i_d, int64_t n, float alpha,
                                    float lambda) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float f = i_f[i];
    const float d = i_d[i];
    const bool sel = ssd_selected(f, d, alpha);
    count += sel;
    if constexpr (kConditionalStore) {
      if (sel) store_f32(theta + i, load_f32(theta + i) * ssd_factor(f, d, lambda));
    } else {
      const T old = theta[i];
      T upd;
      store_f32(&upd, load_f32(&old) * ssd_factor(f, d, lambda));
      theta[i] = pick(sel, upd, old);
    }
  }
  return count;
}

}  // namespace unlearnx
