// Compiled once per ISA (see CMakeLists.txt: UNLEARNX_ISA_NS and the matching -m flags).
#include "unlearnx/ssd.h"
#include "../isa.h"

namespace unlearnx::cpu::UNLEARNX_ISA_NS {

#if defined(__AVX512F__)
constexpr bool kMaskedStore = true;
#else
constexpr bool kMaskedStore = false;
#endif

int64_t ssd_dampen_f32(float* theta, const float* i_f, const float* i_d, int64_t n, float alpha,
                       float lambda) {
  return ssd_dampen_span<kMaskedStore>(theta, i_f, i_d, n, alpha, lambda);
}

int64_t ssd_dampen_bf16(bf16_bits* theta, const float* i_f, const float* i_d, int64_t n,
                        float alpha, float lambda) {
  return ssd_dampen_span<kMaskedStore>(theta, i_f, i_d, n, alpha, lambda);
}

}  // namespace unlearnx::cpu::UNLEARNX_ISA_NS
