#include "isa.h"

#include <cstdlib>
#include <cstring>

namespace unlearnx::cpu {

static Isa detect() {
  Isa best = Isa::base;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = Isa::avx512;
#endif
  // A user (or a benchmark) may ask for a lower ISA; never a higher one than the CPU has.
  if (const char* want = std::getenv("UNLEARNX_CPU_ISA")) {
    Isa w = best;
    if (!std::strcmp(want, "base")) w = Isa::base;
    else if (!std::strcmp(want, "avx2")) w = Isa::avx2;
    else if (!std::strcmp(want, "avx512")) w = Isa::avx512;
    if (static_cast<int>(w) < static_cast<int>(best)) best = w;
  }
  return best;
}

Isa active_isa() {
  static const Isa isa = detect();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "base";
  }
}

std::vector<std::string> compiled_isas() {
#if defined(__x86_64__)
  return {"base", "avx2", "avx512"};
#else
  return {"base"};
#endif
}

}  // namespace unlearnx::cpu
