// Compiled once per ISA (see CMakeLists.txt: UNLEARNX_ISA_NS and the matching -m flags).
#include "unlearnx/token_stats.h"
#include "../isa.h"

namespace unlearnx::cpu::UNLEARNX_ISA_NS {

// Rows [0, rows) of a [rows, vocab] logits matrix with row stride `stride` (elements).
template <typename T>
__attribute__((always_inline)) inline void token_stats_rows(const T* logits, const int64_t* labels, int64_t rows, int64_t vocab, int64_t stride,
                             int64_t ignore_index, float* logp, float* mu, float* var) {
  alignas(64) float buf[kTokenStatsChunk];
  for (int64_t r = 0; r < rows; ++r)
    token_stats_row(logits + r * stride, vocab, labels[r], ignore_index, buf, logp + r, mu + r, var + r);
}

void token_stats_f32(const float* logits, const int64_t* labels, int64_t rows, int64_t vocab, int64_t stride,
                     int64_t ignore_index, float* logp, float* mu, float* var) {
  token_stats_rows(logits, labels, rows, vocab, stride, ignore_index, logp, mu, var);
}

void token_stats_bf16(const bf16_bits* logits, const int64_t* labels, int64_t rows, int64_t vocab, int64_t stride,
                      int64_t ignore_index, float* logp, float* mu, float* var) {
  token_stats_rows(logits, labels, rows, vocab, stride, ignore_index, logp, mu, var);
}

void token_stats_f16(const f16_bits* logits, const int64_t* labels, int64_t rows, int64_t vocab, int64_t stride,
                     int64_t ignore_index, float* logp, float* mu, float* var) {
  token_stats_rows(logits, labels, rows, vocab, stride, ignore_index, logp, mu, var);
}

}  // namespace unlearnx::cpu::UNLEARNX_ISA_NS
