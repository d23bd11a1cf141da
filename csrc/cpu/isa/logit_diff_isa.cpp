// Logit-combination decoding rows, compiled once per ISA (CMakeLists.txt: UNLEARNX_ISA_NS, the
// matching -m flags, and -ffp-contract=off so z_t − w·z_a rounds twice, as the fp32 reference does).
// dtype codes: 0 fp32, 1 bf16, 2 fp16. Rows [0, rows) of [rows, vocab] contiguous inputs; `row0`
// is the first row's index in the batch (it selects the Gumbel stream).
#include "unlearnx/logit_diff.h"
#include "../isa.h"

namespace unlearnx::cpu::UNLEARNX_ISA_NS {
namespace {

// Per-thread scratch kept between calls: a decoding loop calls the op once per token, and four
// row-sized buffers allocated and zero-filled per call would be a pass over the row each.
LogitDiffScratch& scratch(int64_t vocab, bool sample) {
  thread_local LogitDiffScratch s;
  const size_t v = size_t(vocab);
  if (s.buf.size() < v) s.buf.resize(v);
  if (sample && s.val.size() < v) {
    s.val.resize(v);
    s.idx.resize(v);
    s.mass.resize(v);
  }
  return s;
}

template <typename T>
void sample_rows(const T* zt, const T* za, int64_t row0, int64_t rows, int64_t vocab, const LogitDiffParams& p,
                 int64_t* tokens, float* logprob) {
  LogitDiffScratch& s = scratch(vocab, true);
  for (int64_t r = 0; r < rows; ++r)
    logit_diff_sample_row(zt + r * vocab, za ? za + r * vocab : nullptr, vocab, p, row0 + r, s, tokens + r,
                          logprob + r);
}

template <typename T>
void logprob_rows(const T* zt, const T* za, int64_t rows, int64_t vocab, const LogitDiffParams& p, float* out) {
  LogitDiffScratch& s = scratch(vocab, false);
  for (int64_t r = 0; r < rows; ++r)
    logit_diff_logprobs_row(zt + r * vocab, za ? za + r * vocab : nullptr, vocab, p, s, out + r * vocab);
}

}  // namespace

void logit_diff_sample_rows(const void* zt, const void* za, int dtype, int64_t row0, int64_t rows, int64_t vocab,
                            const LogitDiffParams& p, int64_t* tokens, float* logprob) {
  if (dtype == 0)
    sample_rows(static_cast<const float*>(zt), static_cast<const float*>(za), row0, rows, vocab, p, tokens, logprob);
  else if (dtype == 1)
    sample_rows(static_cast<const bf16_bits*>(zt), static_cast<const bf16_bits*>(za), row0, rows, vocab, p, tokens,
                logprob);
  else
    sample_rows(static_cast<const f16_bits*>(zt), static_cast<const f16_bits*>(za), row0, rows, vocab, p, tokens,
                logprob);
}

void logit_diff_logprobs_rows(const void* zt, const void* za, int dtype, int64_t rows, int64_t vocab,
                              const LogitDiffParams& p, float* out) {
  if (dtype == 0)
    logprob_rows(static_cast<const float*>(zt), static_cast<const float*>(za), rows, vocab, p, out);
  else if (dtype == 1)
    logprob_rows(static_cast<const bf16_bits*>(zt), static_cast<const bf16_bits*>(za), rows, vocab, p, out);
  else
    logprob_rows(static_cast<const f16_bits*>(zt), static_cast<const f16_bits*>(za), rows, vocab, p, out);
}

}  // namespace unlearnx::cpu::UNLEARNX_ISA_NS
