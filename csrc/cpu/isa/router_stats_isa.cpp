// Compiled once per ISA (see CMakeLists.txt: UNLEARNX_ISA_NS and the matching -m flags).
#include "unlearnx/router_stats.h"
#include "../isa.h"

namespace unlearnx::cpu::UNLEARNX_ISA_NS {

// Tokens per vector: one native float register (router_stats.h).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
static_assert(kLanes <= kRouterMaxLanes);

void router_stats_chunk_f32(const float* z, const int64_t* flags, int64_t n, int64_t E, int64_t k, bool normalize,
                            float* work, int32_t* topi, int32_t* order, float* acc) {
  router_stats_chunk<kLanes>(z, flags, n, E, k, normalize, work, topi, order, acc);
}

void router_stats_chunk_bf16(const bf16_bits* z, const int64_t* flags, int64_t n, int64_t E, int64_t k,
                             bool normalize, float* work, int32_t* topi, int32_t* order, float* acc) {
  router_stats_chunk<kLanes>(z, flags, n, E, k, normalize, work, topi, order, acc);
}

}  // namespace unlearnx::cpu::UNLEARNX_ISA_NS
