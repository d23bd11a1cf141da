// Runtime CPU ISA dispatch. Each kernel file under csrc/cpu/isa/ is compiled once per ISA with its
// own -m flags into namespace unlearnx::cpu::<isa>; the dispatcher picks the best one the CPU
// supports (or the one UNLEARNX_CPU_ISA=avx512|avx2|base asks for, never above what it supports).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "unlearnx/common.h"

namespace unlearnx::cpu {

enum class Isa : int { base = 0, avx2 = 1, avx512 = 2 };

Isa active_isa();
const char* isa_name(Isa isa);
std::vector<std::string> compiled_isas();

#define UNLEARNX_DECLARE_ISA_KERNELS(ns)                                                    \
  namespace ns {                                                                            \
  int64_t ssd_dampen_f32(float* theta, const float* i_f, const float* i_d, int64_t n,       \
                         float alpha, float lambda);                                        \
  int64_t ssd_dampen_bf16(bf16_bits* theta, const float* i_f, const float* i_d, int64_t n,  \
                          float alpha, float lambda);                                       \
  }

UNLEARNX_DECLARE_ISA_KERNELS(base)
UNLEARNX_DECLARE_ISA_KERNELS(avx2)
UNLEARNX_DECLARE_ISA_KERNELS(avx512)

// Calls ns::fn(args...) for the active ISA.
#define UNLEARNX_ISA_DISPATCH(fn, ...)                                  \
  ([&]() {                                                              \
    switch (::unlearnx::cpu::active_isa()) {                            \
      case ::unlearnx::cpu::Isa::avx512:                                \
        return ::unlearnx::cpu::avx512::fn(__VA_ARGS__);                \
      case ::unlearnx::cpu::Isa::avx2:                                  \
        return ::unlearnx::cpu::avx2::fn(__VA_ARGS__);                  \
      default:                                                          \
        return ::unlearnx::cpu::base::fn(__VA_ARGS__);                  \
    }                                                                   \
  }())

}  // namespace unlearnx::cpu

// token_stats (csrc/cpu/isa/token_stats_isa.cpp): per-row log p(label), mu, var of softmax(logits).
namespace unlearnx {
struct f16_bits;
}
#define UNLEARNX_DECLARE_TOKEN_STATS_KERNELS(ns)                                                           \
  namespace unlearnx::cpu::ns {                                                                           \
  void token_stats_f32(const float* logits, const int64_t* labels, int64_t rows, int64_t vocab,           \
                       int64_t stride, int64_t ignore_index, float* logp, float* mu, float* var);        \
  void token_stats_bf16(const bf16_bits* logits, const int64_t* labels, int64_t rows, int64_t vocab,      \
                        int64_t stride, int64_t ignore_index, float* logp, float* mu, float* var);       \
  void token_stats_f16(const f16_bits* logits, const int64_t* labels, int64_t rows, int64_t vocab,        \
                       int64_t stride, int64_t ignore_index, float* logp, float* mu, float* var);        \
  }
UNLEARNX_DECLARE_TOKEN_STATS_KERNELS(base)
UNLEARNX_DECLARE_TOKEN_STATS_KERNELS(avx2)
UNLEARNX_DECLARE_TOKEN_STATS_KERNELS(avx512)
