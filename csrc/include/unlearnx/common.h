// Torch-free helpers shared by the CPU and CUDA kernel bodies.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define UNLEARNX_HD __host__ __device__ __forceinline__
#else
#define UNLEARNX_HD inline __attribute__((always_inline))
#endif

namespace unlearnx {

// bf16 is carried as its raw 16 bits so kernel bodies need no torch or CUDA type.
struct bf16_bits {
  uint16_t x;
};

UNLEARNX_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

UNLEARNX_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

UNLEARNX_HD float load_f32(const float* p) { return *p; }
UNLEARNX_HD float load_f32(const bf16_bits* p) { return bits_to_float(uint32_t(p->x) << 16); }

UNLEARNX_HD void store_f32(float* p, float v) { *p = v; }
// Round to nearest even, as c10::BFloat16 does, so native and reference results are bit-identical.
// NaNs stay quiet NaNs (plain rounding could carry a signalling NaN's payload into infinity).
UNLEARNX_HD void store_f32(bf16_bits* p, float v) {
  uint32_t u = float_to_bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p->x = uint16_t((u >> 16) | 0x0040u);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  p->x = uint16_t(u >> 16);
}

// Branch-free select that keeps the chosen value's exact bits (vectorizes to a blend).
UNLEARNX_HD float pick(bool s, float a, float b) { return s ? a : b; }
UNLEARNX_HD bf16_bits pick(bool s, bf16_bits a, bf16_bits b) { return bf16_bits{uint16_t(s ? a.x : b.x)}; }

}  // namespace unlearnx
