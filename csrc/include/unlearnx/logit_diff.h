// Logit-combination decoding, one row at a time (semantics: python/unlearnx/ops/logit_diff.py).
//
// Per row of target logits z_t and auxiliary logits z_a (V each), all in fp32:
//   uld   c = z_t − w·z_a where z_t ≥ min(max z_t + log r, z_t,(k)), k = max(1, ⌊r·V⌋), z_a ≠ −inf;
//         c = z_t elsewhere (Ji et al., 2024, the relative-top filter on logits)
//   whp   c = v_b − w·ReLU(v_r − v_b), −inf where v_b = −inf (Eldan & Russinovich, 2023)
//   none  c = z_t
// then s = c / T, top-k on c (ties kept), top-p on softmax(s) (the smallest tie-inclusive nucleus),
// ℓ = log_softmax(s over kept tokens), and argmax c (greedy) or argmax ℓ + g (Gumbel-max, counter-
// based splitmix64 noise) with ties to the lower index.
//
// Every order statistic — the k-th largest target logit, the top-k threshold and the top-p
// threshold — is one radix select on the order-preserving uint32 key of the fp32 value: an 11-bit
// histogram pass over the row, a pass collecting the one bucket that holds the answer, then two
// more digit levels (11 + 10 bits) over those few candidates. Top-p is the same walk with each
// element weighted by e^{s − max s}: the threshold is the first key (from the top) at which the
// cumulative mass reaches top_p·Σ, so the mass strictly above every kept value is < top_p·Σ.
// No sort of the row anywhere.
//
// The arithmetic is written to round exactly as the fp32 reference (z_t − (w·z_a), not fused):
// the translation unit is compiled with -ffp-contract=off.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "unlearnx/common.h"
#include "unlearnx/token_stats.h"  // f16_bits, load_f32(f16), exp_nonpositive

namespace unlearnx {

enum LogitDiffMode : int { kLdNone = 0, kLdUld = 1, kLdWhp = 2 };

struct LogitDiffParams {
  int mode;
  float weight;        // w (ULD) or α (WHP), rounded to fp32 as torch does for a scalar operand
  int64_t filter_k;    // max(1, ⌊r·V⌋)
  float log_r;         // log r rounded once to fp32
  float temperature;
  int64_t top_k;       // 0 or >= V: off
  double top_p;        // 1: off
  bool greedy;
  uint64_t seed;
  uint64_t offset;
};

}  // namespace unlearnx

// The kernels below are compiled once per ISA (csrc/cpu/isa/logit_diff_isa.cpp), so they live in
// that ISA's namespace: one shared definition of a template or inline function would let the
// linker keep, say, the AVX-512 copy for every caller (an ODR violation that crashes without AVX-512).
#ifdef UNLEARNX_ISA_NS
namespace unlearnx::cpu::UNLEARNX_ISA_NS {

// Order-preserving key: a < b  <=>  key(a) < key(b) for non-NaN floats; −0 and +0 share a key.
inline uint32_t ld_key(float x) {
  const uint32_t u = float_to_bits(x + 0.0f);  // -0 + 0 = +0 (round to nearest)
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float ld_unkey(uint32_t k) { return bits_to_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

constexpr uint64_t kSplitmixGamma = 0x9E3779B97F4A7C15ull;

inline uint64_t splitmix64(uint64_t x) {
  x += kSplitmixGamma;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The noise stream of row `row` (global index: offset + row).
inline uint64_t gumbel_stream(uint64_t seed, uint64_t global_row) {
  return splitmix64(seed + kSplitmixGamma * global_row);
}

// u = (24 high hash bits + ½)·2⁻²⁴ of token v in the stream, in fp32 as the reference computes it.
inline float gumbel_uniform(uint64_t stream, uint32_t v) {
  const uint64_t x = splitmix64(stream + uint64_t(v));
  return (float(int32_t(x >> 40)) + 0.5f) * 5.9604644775390625e-8f;
}

// The exact noise g = −log(−log u) (libm logs in fp32, matching the reference).
inline float gumbel_at(uint64_t stream, int64_t v) { return -std::log(-std::log(gumbel_uniform(stream, uint32_t(v)))); }

// log x for a positive normal fp32 x, branch-free so loops over it vectorize: x = 2^e·m with
// m in [√½, √2), log m = 2·atanh(t), t = (m − 1)/(m + 1), by its series to t^9 (|t| < 0.172: the
// first dropped term is < 4e-10); ln 2 split in two so e·ln 2 keeps full precision. |error| < 1e-6
// for the values the Gumbel draw feeds it (u in (0, 1), −log u in (3e-8, 17.4)).
inline float log_positive(float x) {
  const uint32_t b = float_to_bits(x);
  const float m0 = bits_to_float((b & 0x7fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m0 > 1.41421356f;
  const float m = big ? m0 * 0.5f : m0;
  const float e = float(int32_t(b >> 23) - 127 + (big ? 1 : 0));
  const float f = m - 1.0f;
  const float t = f / (2.0f + f);
  const float t2 = t * t;
  const float series = 1.0f + t2 * (1.0f / 3.0f + t2 * (1.0f / 5.0f + t2 * (1.0f / 7.0f + t2 * (1.0f / 9.0f))));
  return e * 0.693145751953125f + (e * 1.428606765330187e-6f + 2.0f * t * series);
}

// Scratch reused across the rows one thread handles.
struct LogitDiffScratch {
  std::vector<float> buf;    // the row in fp32: z_t, then c
  std::vector<float> val;    // scaled logits s of the kept tokens, compacted
  std::vector<uint32_t> idx; // their token ids
  std::vector<float> mass;   // e^{s − max s} of the kept tokens, for top-p
  std::vector<uint32_t> cand_key;
  std::vector<double> cand_w;
  double hist[2048];
};

// First bucket from the top at which the running weight (carried in `cum`) reaches `target`;
// -1 when the whole histogram stays below it.
inline int ld_scan(const double* hist, int buckets, double target, double& cum) {
  for (int b = buckets - 1; b >= 0; --b) {
    if (cum + hist[b] >= target) return b;
    cum += hist[b];
  }
  return -1;
}

// Lowest non-empty bucket (rounding fallback of a weighted walk: keep the whole candidate set).
inline int ld_lowest(const std::vector<uint32_t>& keys, int shift, uint32_t mask) {
  uint32_t lo = mask;
  for (uint32_t k : keys) lo = ((k >> shift) & mask) < lo ? ((k >> shift) & mask) : lo;
  return int(lo);
}

// Radix select from the top: the largest key K such that the total weight of keys >= K reaches
// target (weights 1: K is the key of the target-th largest element, duplicates counted). item(i,
// key, w) reports element i (false: not a candidate). Returns 0 (every key >= 0) when the total
// weight never reaches the target.
template <class Item>
uint32_t ld_select(LogitDiffScratch& s, int64_t n, Item item, double target) {
  constexpr int kBlock = 256;
  for (double& h : s.hist) h = 0.0;
  uint32_t keys[kBlock];
  double ws[kBlock];
  bool in[kBlock];
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int m = int(n - i0 < kBlock ? n - i0 : kBlock);
    for (int i = 0; i < m; ++i) in[i] = item(i0 + i, keys[i], ws[i]);
    for (int i = 0; i < m; ++i)
      if (in[i]) s.hist[keys[i] >> 21] += ws[i];
  }
  double cum = 0.0;
  const int b1 = ld_scan(s.hist, 2048, target, cum);
  if (b1 < 0) return 0u;
  s.cand_key.clear();
  s.cand_w.clear();
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int m = int(n - i0 < kBlock ? n - i0 : kBlock);
    for (int i = 0; i < m; ++i) in[i] = item(i0 + i, keys[i], ws[i]);
    for (int i = 0; i < m; ++i)
      if (in[i] && int(keys[i] >> 21) == b1) {
        s.cand_key.push_back(keys[i]);
        s.cand_w.push_back(ws[i]);
      }
  }
  uint32_t prefix = uint32_t(b1) << 21;
  // Digits 2 (bits 20..10) and 3 (bits 9..0) over the candidates only.
  const int shifts[2] = {10, 0};
  const uint32_t masks[2] = {0x7ffu, 0x3ffu};
  for (int level = 0; level < 2; ++level) {
    const int sh = shifts[level];
    const uint32_t mk = masks[level];
    for (uint32_t b = 0; b <= mk; ++b) s.hist[b] = 0.0;
    for (size_t j = 0; j < s.cand_key.size(); ++j) s.hist[(s.cand_key[j] >> sh) & mk] += s.cand_w[j];
    int b = ld_scan(s.hist, int(mk) + 1, target, cum);
    if (b < 0) b = ld_lowest(s.cand_key, sh, mk);  // weights summed in another order fell short
    prefix |= uint32_t(b) << sh;
    size_t kept = 0;
    for (size_t j = 0; j < s.cand_key.size(); ++j)
      if (((s.cand_key[j] >> sh) & mk) == uint32_t(b)) {
        s.cand_key[kept] = s.cand_key[j];
        s.cand_w[kept] = s.cand_w[j];
        ++kept;
      }
    s.cand_key.resize(kept);
    s.cand_w.resize(kept);
  }
  return prefix;
}

// Combined logits c of one row into s.buf; returns the index of the first maximum of c.
template <typename T>
int64_t ld_combine_row(const T* __restrict__ zt, const T* __restrict__ za, int64_t vocab, const LogitDiffParams& p,
                       LogitDiffScratch& s) {
  float* __restrict__ buf = s.buf.data();
  const float w = p.weight;
  if (p.mode == kLdUld) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < vocab; ++i) {
      buf[i] = load_f32(zt + i);
      mx = buf[i] > mx ? buf[i] : mx;
    }
    const uint32_t kth_key = ld_select(
        s, vocab,
        [&](int64_t i, uint32_t& key, double& wt) {
          key = ld_key(buf[i]);
          wt = 1.0;
          return true;
        },
        double(p.filter_k));
    const float kth = ld_unkey(kth_key);
    const float lifted = mx + p.log_r;
    const float thr = lifted < kth ? lifted : kth;
    for (int64_t i = 0; i < vocab; ++i) {
      const float a = load_f32(za + i);
      const float prod = w * a;
      const float diff = buf[i] - prod;
      buf[i] = (buf[i] >= thr && a != -INFINITY) ? diff : buf[i];
    }
  } else if (p.mode == kLdWhp) {
    for (int64_t i = 0; i < vocab; ++i) {
      const float b = load_f32(zt + i);
      const float d = load_f32(za + i) - b;
      const float relu = d > 0.0f ? d : 0.0f;
      const float prod = w * relu;
      const float mixed = b - prod;
      buf[i] = b == -INFINITY ? -INFINITY : mixed;
    }
  } else {
    for (int64_t i = 0; i < vocab; ++i) buf[i] = load_f32(zt + i);
  }
  // The max in 16 lanes (vectorizes), then its first index: ties go to the lower token id.
  float lane[16];
  for (int l = 0; l < 16; ++l) lane[l] = -INFINITY;
  int64_t i = 0;
  for (; i + 16 <= vocab; i += 16)
    for (int l = 0; l < 16; ++l) lane[l] = buf[i + l] > lane[l] ? buf[i + l] : lane[l];
  for (; i < vocab; ++i) lane[0] = buf[i] > lane[0] ? buf[i] : lane[0];
  float best = lane[0];
  for (int l = 1; l < 16; ++l) best = lane[l] > best ? lane[l] : best;
  int64_t arg = 0;
  while (arg < vocab && !(buf[arg] == best)) ++arg;
  return arg < vocab ? arg : 0;  // all NaN: no maximum (NaN logits are outside the contract)
}

// log_softmax(c / T) of one row (no top-k / top-p) into out[0..V).
template <typename T>
void logit_diff_logprobs_row(const T* zt, const T* za, int64_t vocab, const LogitDiffParams& p,
                             LogitDiffScratch& s, float* __restrict__ out) {
  const int64_t arg = ld_combine_row(zt, za, vocab, p, s);
  const float* __restrict__ buf = s.buf.data();
  const float t = p.temperature;
  const float smax = buf[arg] / t;
  double z = 0.0;
  float part[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= vocab; i += 16)
    for (int l = 0; l < 16; ++l) part[l] += exp_nonpositive(buf[i + l] / t - smax);
  for (; i < vocab; ++i) part[0] += exp_nonpositive(buf[i] / t - smax);
  for (int l = 0; l < 16; ++l) z += part[l];
  const float log_z = float(std::log(z));
  for (i = 0; i < vocab; ++i) out[i] = (buf[i] / t - smax) - log_z;
}

// One decoding step of one row: the chosen token and its log-prob under the filtered distribution.
// After top-k the kept tokens are compacted (scaled logit, index; index order), so top-p, the
// log-sum-exp and the Gumbel draw touch only them — 50 entries instead of V with top-k 50.
template <typename T>
void logit_diff_sample_row(const T* zt, const T* za, int64_t vocab, const LogitDiffParams& p, int64_t row,
                           LogitDiffScratch& s, int64_t* token, float* logprob) {
  const int64_t arg = ld_combine_row(zt, za, vocab, p, s);
  const float* __restrict__ buf = s.buf.data();
  const float cmax = buf[arg];
  // top-k on c (the k-th largest, duplicates and −inf entries counted); −inf never kept.
  float kth = -INFINITY;
  if (p.top_k > 0 && p.top_k < vocab)
    kth = ld_unkey(ld_select(
        s, vocab,
        [&](int64_t i, uint32_t& key, double& wt) {
          key = ld_key(buf[i]);
          wt = 1.0;
          return true;
        },
        double(p.top_k)));
  const float t = p.temperature;
  const float smax = cmax / t;
  float* __restrict__ val = s.val.data();
  uint32_t* __restrict__ idx = s.idx.data();
  int64_t n = 0;
  for (int64_t i = 0; i < vocab; ++i) {  // branch-free compaction
    const float c = buf[i];
    val[n] = c;
    idx[n] = uint32_t(i);
    n += (c > -INFINITY && c >= kth) ? 1 : 0;
  }
  if (t != 1.0f)
    for (int64_t j = 0; j < n; ++j) val[j] = val[j] / t;  // s = c / T (a separate loop: it vectorizes)
  if (p.top_p < 1.0 && n > 1) {
    float* __restrict__ mass = s.mass.data();
    // Σ e^{s − smax} over the kept tokens and over the "heavy" ones (s − smax >= kHeavy), in 16
    // float lanes so the loop vectorizes.
    constexpr float kHeavy = -12.0f;
    float all_l[16] = {0}, heavy_l[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
      for (int l = 0; l < 16; ++l) {
        const float d = val[j + l] - smax;
        mass[j + l] = exp_nonpositive(d);
        all_l[l] += mass[j + l];
        heavy_l[l] += d >= kHeavy ? mass[j + l] : 0.0f;
      }
    for (; j < n; ++j) {
      const float d = val[j] - smax;
      mass[j] = exp_nonpositive(d);
      all_l[0] += mass[j];
      heavy_l[0] += d >= kHeavy ? mass[j] : 0.0f;
    }
    double total = 0.0, heavy = 0.0;
    for (int l = 0; l < 16; ++l) {
      total += all_l[l];
      heavy += heavy_l[l];
    }
    const double target = p.top_p * total;
    if (heavy >= target) {
      // The nucleus lies among the heavy tokens (every token above a heavy one is heavy, and they
      // alone reach the target), so the select only needs them: usually a small fraction of V.
      int64_t m = 0;
      for (j = 0; j < n; ++j) {
        val[m] = val[j];
        idx[m] = idx[j];
        mass[m] = mass[j];
        m += (val[j] - smax) >= kHeavy ? 1 : 0;
      }
      n = m;
    }
    const uint32_t cut = ld_select(
        s, n,
        [&](int64_t j, uint32_t& key, double& wt) {
          key = ld_key(val[j]);
          wt = mass[j];
          return true;
        },
        target);
    int64_t m = 0;
    for (j = 0; j < n; ++j) {
      val[m] = val[j];
      idx[m] = idx[j];
      m += ld_key(val[j]) >= cut ? 1 : 0;
    }
    n = m;
  }
  if (n == 0) {  // nothing to choose from (every combined logit −inf): token 0, NaN, as the reference
    *token = 0;
    *logprob = NAN;
    return;
  }
  double z = 0.0;
  {
    float part[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
      for (int l = 0; l < 16; ++l) part[l] += exp_nonpositive(val[j + l] - smax);
    for (; j < n; ++j) part[0] += exp_nonpositive(val[j] - smax);
    for (int l = 0; l < 16; ++l) z += part[l];
  }
  const float log_z = float(std::log(z));
  // The first maximum of c (the likeliest token, always kept) has log-prob (smax − smax) − log Σ.
  const float lp_arg = (smax - smax) - log_z;
  int64_t tok = arg;
  float tok_lp = lp_arg;
  if (!p.greedy) {
    // Gumbel-max over kept tokens, a block at a time. Two cheap filters decide which tokens get the
    // exact noise (libm logs, as the reference): (1) g <= g_max for every 24-bit u, so a block whose
    // best log-prob is more than g_max below the best key cannot win; (2) otherwise every key is
    // estimated with the vectorized log (|error| < 1e-5) and only tokens within 1e-3 of the best
    // exact key are scored exactly. The likeliest token is scored first so both bite from the start.
    const uint64_t stream = gumbel_stream(p.seed, p.offset + uint64_t(row));
    const float g_max = -std::log(-std::log((16777215.0f + 0.5f) * 5.9604644775390625e-8f)) + 1e-3f;
    constexpr float kSlack = 1e-3f;
    float best = lp_arg + gumbel_at(stream, arg);
    constexpr int kBlock = 256;
    float lpb[kBlock], est[kBlock];
    for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
      const int m = int(n - j0 < kBlock ? n - j0 : kBlock);
      float lmax = -INFINITY;
      for (int l = 0; l < m; ++l) {
        lpb[l] = (val[j0 + l] - smax) - log_z;
        lmax = lpb[l] > lmax ? lpb[l] : lmax;
      }
      if (lmax + g_max < best) continue;
      // Three simple loops (hash, logs, max) so each vectorizes.
      for (int l = 0; l < m; ++l) est[l] = gumbel_uniform(stream, idx[j0 + l]);
      for (int l = 0; l < m; ++l) est[l] = lpb[l] - log_positive(-log_positive(est[l]));
      float lane[16];
      for (int q = 0; q < 16; ++q) lane[q] = -INFINITY;
      int l0 = 0;
      for (; l0 + 16 <= m; l0 += 16)
        for (int q = 0; q < 16; ++q) lane[q] = est[l0 + q] > lane[q] ? est[l0 + q] : lane[q];
      for (; l0 < m; ++l0) lane[0] = est[l0] > lane[0] ? est[l0] : lane[0];
      float emax = lane[0];
      for (int q = 1; q < 16; ++q) emax = lane[q] > emax ? lane[q] : emax;
      if (emax < best - kSlack) continue;
      for (int l = 0; l < m; ++l) {
        const int64_t i = idx[j0 + l];
        if (est[l] < best - kSlack || i == arg) continue;
        const float key = lpb[l] + gumbel_at(stream, i);
        if (key > best || (key == best && i < tok)) {
          best = key;
          tok = i;
          tok_lp = lpb[l];
        }
      }
    }
  }
  *token = tok;
  *logprob = tok_lp;
}

}  // namespace unlearnx::cpu::UNLEARNX_ISA_NS
#endif  // UNLEARNX_ISA_NS
