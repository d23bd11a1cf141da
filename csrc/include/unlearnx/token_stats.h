// Per-token statistics of a softmax over the vocabulary, in one pass over a row of logits z[0..V),
// without materializing log_softmax (Min-K%++, Zhang et al., 2024; per-token NLL for LM losses):
//   log p(y) = z_y - lse(z)
//   mu       = sum_v p_v log p_v
//   var      = sum_v p_v (log p_v)^2 - mu^2
// The row is cut into chunks that stay in L1. Per chunk: its max c; the running sums are moved to
// the new max m' = max(m, c) and the chunk is added with d = z - m':
//   s0 = sum e^d,  s1 = sum e^d d,  s2 = sum e^d d^2
// Moving sums from m to m' (delta = m' - m, r = e^-delta):
//   s0' = r s0,   s1' = r (s1 - delta s0),   s2' = r (s2 - 2 delta s1 + delta^2 s0)
// and at the end, with L = log s0:  log p(y) = (z_y - m) - L,  mu = s1/s0 - L,
// var = s2/s0 - (s1/s0)^2 (the variance of z under p; shift-invariant).
// -inf logits are probabilities 0 and contribute exactly 0 (lim p log p = 0); NaN or +inf logits
// give NaN outputs, as log_softmax does.
#pragma once
#include <cmath>

#include "unlearnx/common.h"

namespace unlearnx {

struct f16_bits {
  uint16_t x;
};

// IEEE half -> float, branch-free: shift the exponent/mantissa into place and rescale by 2^112
// (this also maps half subnormals exactly); inf/NaN get the float exponent field.
UNLEARNX_HD float load_f32(const f16_bits* p) {
  const uint32_t h = p->x;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  const float scaled = bits_to_float(em << 13) * 5.192296858534828e33f;  // 2^112
  const uint32_t special = (em << 13) | 0x7f800000u;
  const uint32_t mag = em >= 0x7c00u ? special : float_to_bits(scaled);
  return bits_to_float(mag | sign);
}

// e^x for x <= 0 (what the kernel needs), branch-free so loops over it vectorize: x = n ln2 + r,
// |r| <= ln2/2, e^r by a degree-6 polynomial (rel. error ~2e-7), 2^n through the exponent bits.
// Below -87 (where e^x leaves the normal range) the result is 0.
UNLEARNX_HD float exp_nonpositive(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  // Round to nearest with the 1.5 * 2^23 trick: no floorf libcall, so SSE2 code vectorizes too.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - n * 0.693145751953125f - n * 1.428606765330187045e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float two_n = bits_to_float(uint32_t(int32_t(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * two_n;
}

struct TokenStatsSums {
  double m, s0, s1, s2;
};

constexpr int kTokenStatsLanes = 16;
constexpr int64_t kTokenStatsChunk = 2048;

// Adds one chunk z[0..n) (n <= kTokenStatsChunk) to the running sums. `buf` holds the chunk
// converted to fp32 (read from memory once; the second sweep reads L1).
template <typename T>
UNLEARNX_HD void token_stats_chunk(const T* __restrict__ z, int64_t n, float* __restrict__ buf,
                                   TokenStatsSums& acc) {
  float mx[kTokenStatsLanes];
  for (int l = 0; l < kTokenStatsLanes; ++l) mx[l] = -INFINITY;
  int64_t i = 0;
  for (; i + kTokenStatsLanes <= n; i += kTokenStatsLanes)
    for (int l = 0; l < kTokenStatsLanes; ++l) {
      const float v = load_f32(z + i + l);
      buf[i + l] = v;
      mx[l] = v > mx[l] ? v : mx[l];
    }
  for (; i < n; ++i) {
    const float v = load_f32(z + i);
    buf[i] = v;
    mx[0] = v > mx[0] ? v : mx[0];
  }
  float c = mx[0];
  for (int l = 1; l < kTokenStatsLanes; ++l) c = mx[l] > c ? mx[l] : c;
  if (!(c > -INFINITY)) {
    // An all -inf chunk adds nothing; a NaN chunk poisons the sums (NaN outputs, like log_softmax).
    if (c != c) acc.s0 = acc.s1 = acc.s2 = NAN;
    return;
  }
  if (c > acc.m) {
    if (acc.m > -INFINITY) {
      const double delta = double(c) - acc.m, r = std::exp(-delta);
      acc.s2 = r * (acc.s2 - 2.0 * delta * acc.s1 + delta * delta * acc.s0);
      acc.s1 = r * (acc.s1 - delta * acc.s0);
      acc.s0 = r * acc.s0;
    }
    acc.m = c;
  }
  const float m = float(acc.m);
  float a0[kTokenStatsLanes], a1[kTokenStatsLanes], a2[kTokenStatsLanes];
  for (int l = 0; l < kTokenStatsLanes; ++l) a0[l] = a1[l] = a2[l] = 0.0f;
  for (i = 0; i + kTokenStatsLanes <= n; i += kTokenStatsLanes)
    for (int l = 0; l < kTokenStatsLanes; ++l) {
      // -inf logits: d is clamped so e^d * d is 0 * finite = 0, not 0 * -inf = NaN.
      const float d0 = buf[i + l] - m;
      const float d = d0 < -87.0f ? -87.0f : d0;
      const float e = exp_nonpositive(d0);
      a0[l] += e;
      a1[l] += e * d;
      a2[l] += e * d * d;
    }
  for (; i < n; ++i) {
    const float d0 = buf[i] - m;
    const float d = d0 < -87.0f ? -87.0f : d0;
    const float e = exp_nonpositive(d0);
    a0[0] += e;
    a1[0] += e * d;
    a2[0] += e * d * d;
  }
  for (int l = 0; l < kTokenStatsLanes; ++l) {
    acc.s0 += a0[l];
    acc.s1 += a1[l];
    acc.s2 += a2[l];
  }
}

// One row: writes log p(label), mu, var (all 0 when label == ignore_index).
template <typename T>
UNLEARNX_HD void token_stats_row(const T* __restrict__ z, int64_t vocab, int64_t label, int64_t ignore_index,
                                 float* __restrict__ buf, float* logp, float* mu, float* var) {
  if (label == ignore_index) {
    *logp = *mu = *var = 0.0f;
    return;
  }
  TokenStatsSums acc{-INFINITY, 0.0, 0.0, 0.0};
  for (int64_t b = 0; b < vocab; b += kTokenStatsChunk) {
    const int64_t n = vocab - b < kTokenStatsChunk ? vocab - b : kTokenStatsChunk;
    token_stats_chunk(z + b, n, buf, acc);
  }
  const double log_s0 = std::log(acc.s0);
  const double mean_d = acc.s1 / acc.s0;
  const double v = acc.s2 / acc.s0 - mean_d * mean_d;
  *logp = float((double(load_f32(z + label)) - acc.m) - log_s0);
  *mu = float(mean_d - log_s0);
  *var = float(v > 0.0 ? v : (v == v ? 0.0 : v));  // rounding may dip below 0; NaN stays NaN
}

}  // namespace unlearnx
