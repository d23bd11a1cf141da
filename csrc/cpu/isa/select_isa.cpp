// Global selection kernels, compiled once per ISA (see CMakeLists.txt: UNLEARNX_ISA_NS and the
// matching -m flags). Every function works on one span of at most 2^16 elements of one tensor;
// csrc/cpu/select.cpp cuts the tensor list into such spans and runs them in parallel.
// dtype codes: 0 fp32, 1 bf16, 2 fp16 (values), element sizes 2/4/8 (restore).
#include <algorithm>
#include <cstring>

#include "unlearnx/select.h"
#include "../isa.h"

namespace unlearnx::cpu::UNLEARNX_ISA_NS {
namespace {

constexpr int kBlock = 512;  // keys are computed a block at a time (vectorized), then consumed

template <bool kAbs, typename T>
bool hist_top(const T* __restrict__ x, int64_t n, uint32_t* __restrict__ hist) {
  uint32_t bins[kBlock];
  uint32_t nan = 0;
  const int shift = select_shift(kAbs);
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, n - i0));
    for (int i = 0; i < m; ++i) {
      const uint32_t u = load_bits(x + i0 + i);
      nan |= bits_is_nan(u);
      bins[i] = key_of_bits(u, kAbs) >> shift;
    }
    for (int i = 0; i < m; ++i) ++hist[bins[i]];
  }
  return nan != 0;
}

template <bool kAbs, typename T>
void hist_low(const T* __restrict__ x, int64_t n, uint32_t bucket, uint32_t* __restrict__ hist) {
  uint32_t keys[kBlock];
  const int shift = select_shift(kAbs);
  const uint32_t low_mask = (1u << shift) - 1u;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, n - i0));
    for (int i = 0; i < m; ++i) keys[i] = key_of_bits(load_bits(x + i0 + i), kAbs);
    for (int i = 0; i < m; ++i)
      if ((keys[i] >> shift) == bucket) ++hist[keys[i] & low_mask];
  }
}

template <bool kAbs, typename T>
int64_t collect(const T* __restrict__ x, int64_t n, uint32_t bucket, uint32_t* __restrict__ keys_out,
                uint16_t* __restrict__ offs_out) {
  uint32_t keys[kBlock];
  const int shift = select_shift(kAbs);
  int64_t c = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, n - i0));
    for (int i = 0; i < m; ++i) keys[i] = key_of_bits(load_bits(x + i0 + i), kAbs);
    for (int i = 0; i < m; ++i)
      if ((keys[i] >> shift) == bucket) {  // rare (the bucket holds < 1/256 of all elements)
        keys_out[c] = keys[i];
        offs_out[c] = static_cast<uint16_t>(i0 + i);
        ++c;
      }
  }
  return c;
}

template <bool kAbs, typename T>
int64_t count_equal(const T* __restrict__ x, int64_t n, uint32_t key) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += key_of_bits(load_bits(x + i), kAbs) == key;
  return c;
}

template <bool kAbs, bool kLargest, typename T>
void mask_bytes(const T* __restrict__ x, int64_t n, float t, int64_t tie_end, uint8_t* __restrict__ out) {
  // Split at tie_end so each loop has a loop-invariant tie rule and vectorizes.
  for (int64_t i = 0; i < tie_end; ++i) out[i] = mask_keep(load_value(x + i), t, 0, 1, kAbs, kLargest);
  for (int64_t i = tie_end; i < n; ++i) out[i] = mask_keep(load_value(x + i), t, 1, 0, kAbs, kLargest);
}

// Packs 8 bytes of 0/1 (little endian in a uint64) into one byte, element i -> bit i; the
// multiplier routes byte i to bit 56 + i with no carries between the partial products.
inline uint8_t pack8(const uint8_t* b) {
  uint64_t v;
  std::memcpy(&v, b, 8);
  return static_cast<uint8_t>((v * 0x0102040810204080ull) >> 56);
}

template <bool kAbs, bool kLargest, typename T>
void mask_packed(const T* __restrict__ x, int64_t n, float t, int64_t tie_end, uint8_t* __restrict__ out) {
  uint8_t bytes[kBlock + 8];
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, n - i0));
    const int64_t te = std::clamp<int64_t>(tie_end - i0, 0, m);
    mask_bytes<kAbs, kLargest>(x + i0, m, t, te, bytes);
    std::memset(bytes + m, 0, 8);  // padding bits of the last byte are zero
    for (int b = 0; b < (m + 7) / 8; ++b) out[i0 / 8 + b] = pack8(bytes + 8 * b);
  }
}

template <typename U>
void restore_span(U* __restrict__ p, const U* __restrict__ o, const uint8_t* __restrict__ m, bool packed,
                  int64_t n) {
  if (!packed) {
    if (o)
      for (int64_t i = 0; i < n; ++i) p[i] = m[i] ? p[i] : o[i];
    else
      for (int64_t i = 0; i < n; ++i) p[i] = m[i] ? p[i] : U(0);
    return;
  }
  uint8_t bytes[kBlock];
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int mm = static_cast<int>(std::min<int64_t>(kBlock, n - i0));
    for (int i = 0; i < mm; ++i) bytes[i] = (m[(i0 + i) >> 3] >> ((i0 + i) & 7)) & 1u;
    if (o)
      for (int i = 0; i < mm; ++i) p[i0 + i] = bytes[i] ? p[i0 + i] : o[i0 + i];
    else
      for (int i = 0; i < mm; ++i) p[i0 + i] = bytes[i] ? p[i0 + i] : U(0);
  }
}

// Calls f(typed pointer) for the dtype code.
template <typename F>
auto with_dtype(const void* x, int dtype, F&& f) {
  switch (dtype) {
    case 1: return f(static_cast<const bf16_bits*>(x));
    case 2: return f(static_cast<const f16_bits*>(x));
    default: return f(static_cast<const float*>(x));
  }
}

}  // namespace

bool select_hist_top(const void* x, int dtype, int64_t n, bool absolute, uint32_t* hist) {
  return with_dtype(x, dtype, [&](auto p) { return absolute ? hist_top<true>(p, n, hist) : hist_top<false>(p, n, hist); });
}

void select_hist_low(const void* x, int dtype, int64_t n, bool absolute, uint32_t bucket, uint32_t* hist) {
  with_dtype(x, dtype, [&](auto p) { absolute ? hist_low<true>(p, n, bucket, hist) : hist_low<false>(p, n, bucket, hist); });
}

int64_t select_collect(const void* x, int dtype, int64_t n, bool absolute, uint32_t bucket, uint32_t* keys,
                       uint16_t* offs) {
  return with_dtype(x, dtype, [&](auto p) {
    return absolute ? collect<true>(p, n, bucket, keys, offs) : collect<false>(p, n, bucket, keys, offs);
  });
}

int64_t select_count_equal(const void* x, int dtype, int64_t n, bool absolute, uint32_t key) {
  return with_dtype(x, dtype, [&](auto p) { return absolute ? count_equal<true>(p, n, key) : count_equal<false>(p, n, key); });
}

void select_threshold_mask(const void* x, int dtype, int64_t n, float t, int64_t tie_end, bool absolute, bool largest,
                           bool packed, uint8_t* out) {
  with_dtype(x, dtype, [&](auto p) {
    if (packed) {
      if (absolute) largest ? mask_packed<true, true>(p, n, t, tie_end, out) : mask_packed<true, false>(p, n, t, tie_end, out);
      else largest ? mask_packed<false, true>(p, n, t, tie_end, out) : mask_packed<false, false>(p, n, t, tie_end, out);
    } else {
      if (absolute) largest ? mask_bytes<true, true>(p, n, t, tie_end, out) : mask_bytes<true, false>(p, n, t, tie_end, out);
      else largest ? mask_bytes<false, true>(p, n, t, tie_end, out) : mask_bytes<false, false>(p, n, t, tie_end, out);
    }
  });
}

int64_t mask_count(const uint8_t* m, int64_t nbytes, bool packed) {
  int64_t c = 0;
  if (!packed) {
    for (int64_t i = 0; i < nbytes; ++i) c += m[i] != 0;
    return c;
  }
  int64_t i = 0;
  for (; i + 8 <= nbytes; i += 8) {
    uint64_t v;
    std::memcpy(&v, m + i, 8);
    c += __builtin_popcountll(v);
  }
  for (; i < nbytes; ++i) c += __builtin_popcount(m[i]);
  return c;
}

void masked_restore(void* p, const void* o, const uint8_t* m, bool packed, int64_t n, int elem_size) {
  switch (elem_size) {
    case 2: restore_span(static_cast<uint16_t*>(p), static_cast<const uint16_t*>(o), m, packed, n); break;
    case 8: restore_span(static_cast<uint64_t*>(p), static_cast<const uint64_t*>(o), m, packed, n); break;
    default: restore_span(static_cast<uint32_t*>(p), static_cast<const uint32_t*>(o), m, packed, n); break;
  }
}

}  // namespace unlearnx::cpu::UNLEARNX_ISA_NS
