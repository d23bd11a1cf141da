// Compiled once per ISA (see CMakeLists.txt: UNLEARNX_ISA_NS and the matching -m flags).
//
// The per-sample tile kernel: for one macro tile F[o0:o0+mo, i0:i0+ni] and every sample b, the
// tile P_b = G_b^T X_b is computed in registers (MR x NR micro tiles, K = T, rank-1 FMA updates on
// packed panels) and its square is added straight into F: no per-sample gradient and no scratch
// tile ever reaches memory. GCC vector extensions give zmm (AVX-512), ymm (AVX2) or xmm code from
// one source; -std=gnu++17 lets gcc contract the multiply-adds into FMAs.
#include <cstring>
#include <vector>

#include "unlearnx/grad_stats.h"
#include "../isa.h"

namespace unlearnx::cpu::UNLEARNX_ISA_NS {
namespace {

#if defined(__AVX512F__)
constexpr int VW = 16, MR = 8;  // 16 zmm accumulators
#elif defined(__AVX2__)
constexpr int VW = 8, MR = 6;  // 12 ymm accumulators of 16 registers
#else
constexpr int VW = 4, MR = 6;  // 12 xmm accumulators of 16 registers
#endif
constexpr int NR = 2 * VW;
typedef float vf __attribute__((vector_size(VW * sizeof(float))));

inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

// dst[t][c] = src[t * ld_t + c * ld_c] for c < n, 0 for n <= c < W (zero padding keeps edge tiles
// exact). Either layout is read along its unit stride: [T, d] rows (Linear) or [d, T] rows (the
// conv's im2col and output gradient, read without a transposing copy).
template <int W>
void pack_panel(float* __restrict__ dst, const float* __restrict__ src, int64_t ld_t, int64_t ld_c, int64_t T,
                int64_t n) {
  if (ld_c == 1) {
    for (int64_t t = 0; t < T; ++t) {
      const float* s = src + t * ld_t;
      float* d = dst + t * W;
      int64_t c = 0;
      for (; c < n; ++c) d[c] = s[c];
      for (; c < W; ++c) d[c] = 0.0f;
    }
    return;
  }
  for (int64_t c = 0; c < W; ++c) {
    if (c < n) {
      const float* s = src + c * ld_c;
      for (int64_t t = 0; t < T; ++t) dst[t * W + c] = s[t * ld_t];
    } else {
      for (int64_t t = 0; t < T; ++t) dst[t * W + c] = 0.0f;
    }
  }
}

// One MR x NR micro tile: acc = sum_t gp[t, :]^T xp[t, :], then the epilogue of `mode`.
template <int kMode>
void micro_tile(const float* __restrict__ gp, const float* __restrict__ xp, int64_t T, float* F, float* grad,
                int64_t ld, int mr, int nr, double* norm) {
  vf acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = vf{};
  for (int64_t t = 0; t < T; ++t) {
    const vf x0 = *reinterpret_cast<const vf*>(xp + t * NR);
    const vf x1 = *reinterpret_cast<const vf*>(xp + t * NR + VW);
    for (int r = 0; r < MR; ++r) {
      const float g = gp[t * MR + r];
      acc[r][0] += g * x0;
      acc[r][1] += g * x1;
    }
  }
  if constexpr (kMode == kGradTileNorm) {
    // padded rows/columns hold exact zeros, so the whole register tile can be summed
    vf s = vf{};
    for (int r = 0; r < MR; ++r) s += acc[r][0] * acc[r][0] + acc[r][1] * acc[r][1];
    double total = 0.0;
    for (int l = 0; l < VW; ++l) total += s[l];
    *norm += total;
    return;
  }
  if (mr == MR && nr == NR) {
    for (int r = 0; r < MR; ++r) {
      float* f = F + r * ld;
      if constexpr (kMode == kGradTileAdd) {
        storeu(f, loadu(f) + acc[r][0]);
        storeu(f + VW, loadu(f + VW) + acc[r][1]);
      } else {
        storeu(f, loadu(f) + acc[r][0] * acc[r][0]);
        storeu(f + VW, loadu(f + VW) + acc[r][1] * acc[r][1]);
        if (grad) {
          float* w = grad + r * ld;
          storeu(w, loadu(w) + acc[r][0]);
          storeu(w + VW, loadu(w + VW) + acc[r][1]);
        }
      }
    }
    return;
  }
  alignas(64) float tile[MR][NR];
  for (int r = 0; r < MR; ++r) {
    storeu(&tile[r][0], acc[r][0]);
    storeu(&tile[r][VW], acc[r][1]);
  }
  for (int r = 0; r < mr; ++r)
    for (int c = 0; c < nr; ++c) {
      const float v = tile[r][c];
      if constexpr (kMode == kGradTileAdd) {
        F[r * ld + c] += v;
      } else {
        F[r * ld + c] += v * v;
        if (grad) grad[r * ld + c] += v;
      }
    }
}

template <int kMode>
void tile_all_samples(const float* X, const int64_t* xs, const float* G, const int64_t* gs, int64_t B, int64_t T,
                      int64_t d_in, int64_t o0, int64_t mo, int64_t i0, int64_t ni, float* F, float* grad,
                      double* norms) {
  const int64_t mblocks = (mo + MR - 1) / MR, nblocks = (ni + NR - 1) / NR;
  // Per-thread packing panels, reused across calls (a fresh allocation per tile would page-fault).
  thread_local std::vector<float> storage;
  // both panels start on a 64-byte boundary: the micro kernel uses aligned vector loads of xp
  const int64_t gp_len = (mblocks * MR * T + 15) / 16 * 16;
  const size_t need = size_t(gp_len + nblocks * NR * T) + 16;
  if (storage.size() < need) storage.resize(need);
  float* gp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
  float* xp = gp + gp_len;
  for (int64_t b = 0; b < B; ++b) {
    const float* Xb = X + b * xs[0];
    const float* Gb = G + b * gs[0];
    for (int64_t mb = 0; mb < mblocks; ++mb)
      pack_panel<MR>(gp + mb * MR * T, Gb + (o0 + mb * MR) * gs[2], gs[1], gs[2], T, std::min<int64_t>(MR, mo - mb * MR));
    for (int64_t nb = 0; nb < nblocks; ++nb)
      pack_panel<NR>(xp + nb * NR * T, Xb + (i0 + nb * NR) * xs[2], xs[1], xs[2], T, std::min<int64_t>(NR, ni - nb * NR));
    for (int64_t nb = 0; nb < nblocks; ++nb)
      for (int64_t mb = 0; mb < mblocks; ++mb) {
        const int64_t r0 = o0 + mb * MR, c0 = i0 + nb * NR;
        micro_tile<kMode>(gp + mb * MR * T, xp + nb * NR * T, T, F ? F + r0 * d_in + c0 : nullptr,
                          grad ? grad + r0 * d_in + c0 : nullptr, d_in, int(std::min<int64_t>(MR, mo - mb * MR)),
                          int(std::min<int64_t>(NR, ni - nb * NR)), norms ? norms + b : nullptr);
      }
  }
}

}  // namespace

void grad_tile_f32(int mode, const float* X, const int64_t* xs, const float* G, const int64_t* gs, int64_t B,
                   int64_t T, int64_t d_in, int64_t o0, int64_t mo, int64_t i0, int64_t ni, float* F, float* grad,
                   double* norms) {
  switch (mode) {
    case kGradTileSquare: tile_all_samples<kGradTileSquare>(X, xs, G, gs, B, T, d_in, o0, mo, i0, ni, F, grad, nullptr); break;
    case kGradTileAdd: tile_all_samples<kGradTileAdd>(X, xs, G, gs, B, T, d_in, o0, mo, i0, ni, F, nullptr, nullptr); break;
    default: tile_all_samples<kGradTileNorm>(X, xs, G, gs, B, T, d_in, o0, mo, i0, ni, nullptr, nullptr, norms); break;
  }
}

void grad_sq_accum_f32(float* fisher, float* grad, const float* p, int64_t n) {
  if (grad) sq_accum_span<true>(fisher, grad, p, n);
  else sq_accum_span<false>(fisher, nullptr, p, n);
}

double grad_dot_f32(const float* a, const float* b, int64_t n) { return dot_span(a, b, n); }

}  // namespace unlearnx::cpu::UNLEARNX_ISA_NS
