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
  void grad_sq_accum_f32(float* fisher, float* grad, const float* p, int64_t n);            \
  void grad_tile_f32(int mode, const float* X, const int64_t* x_strides, const float* G,    \
                     const int64_t* g_strides, int64_t B, int64_t T, int64_t d_in, int64_t o0, \
                     int64_t mo, int64_t i0, int64_t ni, float* F, float* grad, double* norms); \
  double grad_dot_f32(const float* a, const float* b, int64_t n);                           \
  }

UNLEARNX_DECLARE_ISA_KERNELS(base)
UNLEARNX_DECLARE_ISA_KERNELS(avx2)
UNLEARNX_DECLARE_ISA_KERNELS(avx512)

// Global selection + masks (csrc/cpu/isa/select_isa.cpp); dtype codes 0 fp32, 1 bf16, 2 fp16.
#define UNLEARNX_DECLARE_SELECT_ISA_KERNELS(ns)                                                        \
  namespace ns {                                                                                       \
  bool select_hist_top(const void* x, int dtype, int64_t n, bool absolute, uint32_t* hist);            \
  void select_hist_low(const void* x, int dtype, int64_t n, bool absolute, uint32_t bucket,            \
                       uint32_t* hist);                                                                \
  int64_t select_collect(const void* x, int dtype, int64_t n, bool absolute, uint32_t bucket,          \
                         uint32_t* keys, uint16_t* offs);                                              \
  int64_t select_count_equal(const void* x, int dtype, int64_t n, bool absolute, uint32_t key);        \
  void select_threshold_mask(const void* x, int dtype, int64_t n, float t, int64_t tie_end,            \
                             bool absolute, bool largest, bool packed, uint8_t* out);                  \
  int64_t mask_count(const uint8_t* m, int64_t nbytes, bool packed);                                   \
  void masked_restore(void* p, const void* o, const uint8_t* m, bool packed, int64_t n, int elem_size); \
  }

UNLEARNX_DECLARE_SELECT_ISA_KERNELS(base)
UNLEARNX_DECLARE_SELECT_ISA_KERNELS(avx2)
UNLEARNX_DECLARE_SELECT_ISA_KERNELS(avx512)

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

// moe_router_stats_ (csrc/cpu/isa/router_stats_isa.cpp): one chunk of router logits -> [2][4][E] sums.
#define UNLEARNX_DECLARE_ROUTER_STATS_KERNELS(ns)                                                          \
  namespace unlearnx::cpu::ns {                                                                           \
  void router_stats_chunk_f32(const float* z, const int64_t* flags, int64_t n, int64_t E, int64_t k,       \
                              bool normalize, float* work, int32_t* topi, int32_t* order, float* acc);     \
  void router_stats_chunk_bf16(const bf16_bits* z, const int64_t* flags, int64_t n, int64_t E, int64_t k,  \
                               bool normalize, float* work, int32_t* topi, int32_t* order, float* acc);    \
  }
UNLEARNX_DECLARE_ROUTER_STATS_KERNELS(base)
UNLEARNX_DECLARE_ROUTER_STATS_KERNELS(avx2)
UNLEARNX_DECLARE_ROUTER_STATS_KERNELS(avx512)
// logit_diff (csrc/cpu/isa/logit_diff_isa.cpp): fused logit-combination decoding rows.
namespace unlearnx {
struct LogitDiffParams;
}
#define UNLEARNX_DECLARE_LOGIT_DIFF_KERNELS(ns)                                                             \
  namespace unlearnx::cpu::ns {                                                                            \
  void logit_diff_sample_rows(const void* zt, const void* za, int dtype, int64_t row0, int64_t rows,        \
                              int64_t vocab, const LogitDiffParams& p, int64_t* tokens, float* logprob);    \
  void logit_diff_logprobs_rows(const void* zt, const void* za, int dtype, int64_t rows, int64_t vocab,     \
                                const LogitDiffParams& p, float* out);                                      \
  }
UNLEARNX_DECLARE_LOGIT_DIFF_KERNELS(base)
UNLEARNX_DECLARE_LOGIT_DIFF_KERNELS(avx2)
UNLEARNX_DECLARE_LOGIT_DIFF_KERNELS(avx512)
