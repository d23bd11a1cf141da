// Global selection over a list of tensors: order-preserving 32-bit keys of fp32/bf16/fp16
// values, radix-histogram bodies, threshold masks and exactly-masked restores. Torch-free so the
// CPU (per ISA) and CUDA code share one definition of every element-wise rule.
//
// Key: the fp32 bits u of x (bf16 and fp16 are widened exactly), mapped so that unsigned key
// order == numeric order:
//   signed:   key = u ^ 0x80000000 for x >= 0, ~u for x < 0, with -0 canonicalized to +0
//   absolute: key = u & 0x7fffffff (|x|; -0 and +0 are the same key)
// NaN keys would sort above +inf (or below -inf); callers reject NaN (select) or never keep it
// (masks compare floats, and every comparison with NaN is false).
#pragma once
#include "unlearnx/common.h"

namespace unlearnx {

// fp16 carried as raw bits, like bf16_bits.
struct f16_bits {
  uint16_t x;
};

UNLEARNX_HD uint32_t load_bits(const float* p) { return float_to_bits(*p); }
UNLEARNX_HD uint32_t load_bits(const bf16_bits* p) { return uint32_t(p->x) << 16; }
// Exact fp16 -> fp32 without fp32 subnormals (so a flush-denormals mode cannot change it): the
// exponent is rebased by +112; inf/NaN get the all-ones exponent; an fp16 subnormal m * 2^-24 is
// built as (2^-14 + m * 2^-24) - 2^-14, both normal and the subtraction exact. Branch free.
UNLEARNX_HD uint32_t load_bits(const f16_bits* p) {
  const uint32_t h = p->x;
  const uint32_t o = ((h & 0x7fffu) << 13) + (112u << 23);
  const uint32_t e = h & 0x7c00u;
  const uint32_t special = o + (112u << 23);
  const uint32_t sub = float_to_bits(bits_to_float(o + (1u << 23)) - 6.103515625e-05f);  // 2^-14
  const uint32_t body = e == 0x7c00u ? special : (e == 0u ? sub : o);
  return body | ((h & 0x8000u) << 16);
}

UNLEARNX_HD float load_value(const float* p) { return *p; }
UNLEARNX_HD float load_value(const bf16_bits* p) { return bits_to_float(load_bits(p)); }
UNLEARNX_HD float load_value(const f16_bits* p) { return bits_to_float(load_bits(p)); }

UNLEARNX_HD bool bits_is_nan(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }

UNLEARNX_HD uint32_t key_of_bits(uint32_t u, bool absolute) {
  if (absolute) return u & 0x7fffffffu;
  u = u == 0x80000000u ? 0u : u;  // -0 -> +0: equal values get equal keys
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

UNLEARNX_HD float value_of_key(uint32_t key, bool absolute) {
  if (absolute) return bits_to_float(key);
  return bits_to_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Radix digits: level 1 = the top 16 key bits (the top 16 of the 31 used bits for |x|), level 2
// = the rest. Two levels give the exact key.
UNLEARNX_HD int select_shift(bool absolute) { return absolute ? 15 : 16; }
UNLEARNX_HD uint32_t select_low_bins(bool absolute) { return absolute ? (1u << 15) : (1u << 16); }
constexpr uint32_t kSelectBins = 1u << 16;

// Mask rule, shared by every backend (v = element value as fp32, t = threshold, j = flat index in
// its tensor, limit = that tensor's tie limit):
//   keep  <=>  v beyond t  or  (v == t and j < limit)
// "beyond" is > for largest, < for smallest; |v| and |t| when absolute. NaN is never kept.
UNLEARNX_HD bool mask_keep(float v, float t, int64_t j, int64_t limit, bool absolute, bool largest) {
  if (absolute) v = v < 0.0f ? -v : v;
  const bool beyond = largest ? (v > t) : (v < t);
  return beyond | ((v == t) & (j < limit));
}

}  // namespace unlearnx
