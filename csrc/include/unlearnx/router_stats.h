// Kernel body of unlearnx::moe_router_stats_ (torch-free; see python/unlearnx/ops/router_stats.py).
//
// For one token with router logits z [E] and top-k: p = softmax(z) (fp32), the k largest p_e
// (ties -> lower expert index), gate weight w_e = p_e / sum_{top-k} p (normalize) or p_e, and the
// per-expert sums cnt[e] += 1[e in top-k], gate[e] += w_e 1[e in top-k], ps[e] += p_e, ps2[e] += p_e^2.
//
// Vector layout: L tokens of one group (forget or retain) side by side, one token per lane, with L
// the ISA's float vector width (16 AVX-512, 8 AVX2, 4 SSE2; csrc/cpu/isa/router_stats_isa.cpp).
// Their logits are transposed into blk[e][lane], so every step (max, e^x, sum, normalize, the top-k
// compare-exchange network) is one vector operation on all lanes with no reduction across lanes,
// whatever E is (8 experts vectorize as well as 256). The lane values are GCC vector types of one
// native register. Within an ISA the result is deterministic; across ISAs the per-lane partial
// sums of ps / ps2 (L of them per expert and chunk) and fused multiply-adds round differently.
#pragma once
#include <cmath>
#include <cstdint>

#include "unlearnx/common.h"
#include "unlearnx/token_stats.h"  // exp_nonpositive

namespace unlearnx {

constexpr int kRouterMaxLanes = 16;     // the widest L; callers size the scratch for it
constexpr int64_t kRouterChunk = 1024;  // tokens per chunk (fp32 sums within, fp64 across chunks)

// The helpers taking / returning these are always inlined inside one ISA's translation unit, so the
// vector-argument ABI that -Wpsabi warns about (at the end of the unit) is never used across a call.
#pragma GCC diagnostic ignored "-Wpsabi"
template <int L>
struct RouterLanes {
  typedef float Vec __attribute__((vector_size(4 * L)));
  typedef int32_t Idx __attribute__((vector_size(4 * L)));
};

// Floats of `work` router_stats_chunk needs: blk [E][L], lane sums of p and p^2 [2][E][L], top-k
// values [k][L]; `topi` needs k * L int32 and `order` kRouterChunk int32 (L <= kRouterMaxLanes).
inline int64_t router_stats_work_floats(int64_t E, int64_t k) { return (3 * E + k) * kRouterMaxLanes; }

template <typename V, typename S>
__attribute__((always_inline)) inline V router_load(const S* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename V, typename S>
__attribute__((always_inline)) inline void router_store(S* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof v);
}

#ifdef __AVX512F__
typedef RouterLanes<16>::Vec RouterVec16;

// Lane c of the stage-b pair (x = row r0, y = row r0 | 2^b) after swapping bit b of the row index
// with bit b of the column index; four stages (b = 0..3) transpose 16 x 16.
constexpr int router_tlo(int b, int c) { return (c >> b) & 1 ? 16 + (c ^ (1 << b)) : c; }
constexpr int router_thi(int b, int c) { return (c >> b) & 1 ? 16 + c : c ^ (1 << b); }

template <int b>
__attribute__((always_inline)) inline void router_transpose_stage(RouterVec16* r) {
#define UNLEARNX_T16(f) f(b, 0), f(b, 1), f(b, 2), f(b, 3), f(b, 4), f(b, 5), f(b, 6), f(b, 7), f(b, 8), f(b, 9), \
                        f(b, 10), f(b, 11), f(b, 12), f(b, 13), f(b, 14), f(b, 15)
  for (int r0 = 0; r0 < 16; ++r0) {
    if (r0 & (1 << b)) continue;
    const RouterVec16 x = r[r0], y = r[r0 | (1 << b)];
    r[r0] = __builtin_shufflevector(x, y, UNLEARNX_T16(router_tlo));
    r[r0 | (1 << b)] = __builtin_shufflevector(x, y, UNLEARNX_T16(router_thi));
  }
#undef UNLEARNX_T16
}

__attribute__((always_inline)) inline RouterVec16 router_load16(const float* p) {
  return router_load<RouterVec16>(p);
}
__attribute__((always_inline)) inline RouterVec16 router_load16(const bf16_bits* p) {
  typedef uint16_t U16 __attribute__((vector_size(32)));
  const RouterLanes<16>::Idx u = __builtin_convertvector(router_load<U16>(p), RouterLanes<16>::Idx) << 16;
  RouterVec16 v;  // bf16 -> fp32: the bf16 bits are the high half
  __builtin_memcpy(&v, &u, sizeof v);
  return v;
}
#endif

// blk[e][l] = row l's logit e for L rows. With AVX-512 full 16 x 16 tiles go through registers
// (64 two-register permutes); the other ISAs (and the E % 16 tail) copy element by element.
template <int L, typename T>
__attribute__((always_inline)) inline void router_transpose_rows(const T* const* rows, int64_t E, float* blk) {
  int64_t e0 = 0;
#ifdef __AVX512F__
  if constexpr (L == 16) {
    for (; e0 + L <= E; e0 += L) {
      RouterVec16 r[L];
      for (int l = 0; l < L; ++l) r[l] = router_load16(rows[l] + e0);
      router_transpose_stage<0>(r);
      router_transpose_stage<1>(r);
      router_transpose_stage<2>(r);
      router_transpose_stage<3>(r);
      for (int c = 0; c < L; ++c) router_store(blk + (e0 + c) * L, r[c]);
    }
  }
#endif
  for (int l = 0; l < L; ++l)
    for (int64_t e = e0; e < E; ++e) blk[e * L + l] = load_f32(rows[l] + e);
}

// Tokens order[0..n) (all of one group) of a [T, E] logits matrix; adds into acc = cnt, gate, ps,
// ps2 (E floats each, contiguous). ps / ps2 are summed per lane over the tokens, then over the lanes
// in lane order; cnt / gate token by token.
template <int L, typename T>
__attribute__((always_inline)) inline void router_stats_group(const T* __restrict__ z, const int32_t* order, int64_t n,
                                                              int64_t E, int64_t k, bool normalize,
                                                              float* __restrict__ work, int32_t* __restrict__ topi,
                                                              float* __restrict__ acc) {
  typedef typename RouterLanes<L>::Vec Vec;
  typedef typename RouterLanes<L>::Idx Idx;
  float* __restrict__ blk = work;
  float* __restrict__ lps = work + E * L;
  float* __restrict__ lps2 = work + 2 * E * L;
  float* __restrict__ topv = work + 3 * E * L;
  for (int64_t i = 0; i < 2 * E * L; ++i) lps[i] = 0.f;
  for (int64_t b = 0; b < n; b += L) {
    const int nb = n - b < L ? int(n - b) : L;
    // Transpose the block's rows into lanes; the missing lanes of a ragged last block get logits 0
    // (finite) and weight 0.
    if (nb == L) {
      const T* rows[L];
      for (int l = 0; l < L; ++l) rows[l] = z + int64_t(order[b + l]) * E;
      router_transpose_rows<L>(rows, E, blk);
    } else {
      for (int l = 0; l < nb; ++l) {
        const T* row = z + int64_t(order[b + l]) * E;
        for (int64_t e = 0; e < E; ++e) blk[e * L + l] = load_f32(row + e);
      }
      for (int l = nb; l < L; ++l)
        for (int64_t e = 0; e < E; ++e) blk[e * L + l] = 0.f;
    }
    Vec w;
    for (int l = 0; l < L; ++l) w[l] = l < nb ? 1.f : 0.f;

    Vec m = router_load<Vec>(blk);
    for (int64_t e = 1; e < E; ++e) {
      const Vec x = router_load<Vec>(blk + e * L);
      m = x > m ? x : m;
    }
    Vec s = {};
    for (int64_t e = 0; e < E; ++e) {
      // exp_nonpositive is scalar source; this fixed-trip loop over the lanes vectorizes
      float* x = blk + e * L;
      for (int l = 0; l < L; ++l) x[l] = exp_nonpositive(x[l] - m[l]);
      s += router_load<Vec>(x);
    }
    const Vec inv = 1.f / s;
    // Top-k by a compare-exchange insertion per lane: the candidate (v, vi) goes down the descending
    // list and swaps with every entry it beats: v > t, or v == t with a lower index, so a displaced
    // entry keeps its place ahead of equal later experts (ties -> lower expert index).
    for (int64_t j = 0; j < k; ++j) {
      router_store(topv + j * L, Vec{} - 1.f);
      router_store(topi + j * L, Idx{} + int32_t(j));
    }
    for (int64_t e = 0; e < E; ++e) {
      Vec v = router_load<Vec>(blk + e * L) * inv;
      router_store(lps + e * L, router_load<Vec>(lps + e * L) + v * w);
      router_store(lps2 + e * L, router_load<Vec>(lps2 + e * L) + v * v * w);
      Idx vi = Idx{} + int32_t(e);
      for (int64_t j = 0; j < k; ++j) {
        const Vec t = router_load<Vec>(topv + j * L);
        const Idx ti = router_load<Idx>(topi + j * L);
        const Idx beats = (v > t) | ((v == t) & (vi < ti));
        router_store(topv + j * L, beats ? v : t);
        router_store(topi + j * L, beats ? vi : ti);
        v = beats ? t : v;
        vi = beats ? ti : vi;
      }
    }
    Vec topsum = {};
    for (int64_t j = 0; j < k; ++j) topsum += router_load<Vec>(topv + j * L);
    const Vec scale = normalize ? 1.f / topsum : Vec{} + 1.f;
    // Scatter into the experts' counts and gate sums, token by token (lane order = token order).
    for (int l = 0; l < nb; ++l)
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = topi[j * L + l];
        acc[e] += 1.f;
        acc[E + e] += topv[j * L + l] * scale[l];
      }
  }
  for (int64_t e = 0; e < E; ++e) {
    float a = 0.f, a2 = 0.f;
    for (int l = 0; l < L; ++l) {
      a += lps[e * L + l];
      a2 += lps2[e * L + l];
    }
    acc[2 * E + e] += a;
    acc[3 * E + e] += a2;
  }
}

// One chunk of n <= kRouterChunk tokens, L lanes per vector: flags[t] in {0, 1, 2} (0 skipped). acc [2][4][E] fp32 is
// overwritten with the chunk's sums for groups 1 and 2 (columns cnt, gate, ps, ps2).
template <int L, typename T>
__attribute__((always_inline)) inline void router_stats_chunk(const T* z, const int64_t* flags, int64_t n, int64_t E,
                                                              int64_t k, bool normalize, float* work, int32_t* topi,
                                                              int32_t* order, float* acc) {
  for (int64_t i = 0; i < 8 * E; ++i) acc[i] = 0.f;
  for (int64_t g = 1; g <= 2; ++g) {
    int64_t cnt = 0;
    for (int64_t t = 0; t < n; ++t)
      if (flags[t] == g) order[cnt++] = int32_t(t);
    if (cnt) router_stats_group<L>(z, order, cnt, E, k, normalize, work, topi, acc + (g - 1) * 4 * E);
  }
}

}  // namespace unlearnx
