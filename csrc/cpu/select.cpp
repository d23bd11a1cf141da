// CPU implementation of the selection ops (schemas in csrc/registration.cpp).
//
// global_select: radix select on the order-preserving 32-bit keys (unlearnx/select.h):
//   pass 1  per-thread histograms of the top 16 key bits over every span, merged; NaN check;
//           the bucket holding rank k is found on the merged histogram;
//   pass 2  if that bucket holds few elements (<= N/256), its keys and span offsets are copied
//           into a small buffer (6 B each: < 0.6% of fp32 input) and the exact value and the
//           tie positions are found there; otherwise (heavy concentration) a histogram of the
//           low key bits restricted to the bucket gives the exact value, and the tie positions
//           (when an exact count is asked for) take one more counting pass.
// Nothing is concatenated or sorted over the whole input; all counts are int64.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "../select_common.h"
#include "isa.h"
#include "unlearnx/select.h"

namespace unlearnx {
namespace {

struct Located {
  int64_t bucket = 0;  // bin holding the wanted rank
  int64_t below = 0;   // elements in lower bins
  int64_t count = 0;   // elements in that bin
};

// 1-based rank `rank` in a histogram of int64 counts.
Located locate(const std::vector<int64_t>& hist, int64_t rank) {
  Located r;
  for (size_t b = 0; b < hist.size(); ++b) {
    if (r.below + hist[b] >= rank) {
      r.bucket = static_cast<int64_t>(b);
      r.count = hist[b];
      return r;
    }
    r.below += hist[b];
  }
  fail("internal error: rank beyond the histogram total");
}

// Runs body(span, hist) over every span in parallel with one uint32 histogram of `bins` per task,
// flushed into the shared int64 histogram before it could overflow and at the end of the task.
template <typename Body>
std::vector<int64_t> parallel_histogram(const ListPlan& plan, uint32_t bins, Body body) {
  std::vector<int64_t> total(bins, 0);
  std::mutex mu;
  torch::stable::parallel_for(0, static_cast<int64_t>(plan.span_tensor.size()), 1, [&](int64_t s0, int64_t s1) {
    std::vector<uint32_t> local(bins, 0);
    int64_t since_flush = 0;
    auto flush = [&]() {
      std::lock_guard<std::mutex> lock(mu);
      for (uint32_t b = 0; b < bins; ++b) total[b] += local[b];
      std::fill(local.begin(), local.end(), 0u);
      since_flush = 0;
    };
    for (int64_t s = s0; s < s1; ++s) {
      if (since_flush > (int64_t(1) << 31)) flush();
      body(static_cast<size_t>(s), local.data());
      since_flush += plan.span_len(static_cast<size_t>(s));
    }
    flush();
  });
  return total;
}

struct TaskCandidates {
  int64_t first_span = 0;
  std::vector<uint32_t> keys;
  std::vector<uint16_t> offs;
};

}  // namespace

std::tuple<Tensor, Tensor, Tensor> global_select_cpu(std::vector<Tensor> xs, int64_t k, bool absolute, bool largest,
                                                     bool exact) {
  const ListPlan plan = select_check_values(xs, "xs");
  select_check_k(k, plan.total);
  const int64_t N = plan.total;
  const int64_t nspans = static_cast<int64_t>(plan.span_tensor.size());
  auto ptr = [&](size_t s) {
    const size_t t = static_cast<size_t>(plan.span_tensor[s]);
    const int64_t es = plan.dtype[t] == 0 ? 4 : 2;
    return static_cast<const char*>(xs[t].const_data_ptr()) + plan.span_begin[s] * es;
  };
  auto dtype_of = [&](size_t s) { return plan.dtype[static_cast<size_t>(plan.span_tensor[s])]; };

  // ---- pass 1: top-bits histogram + NaN check
  std::atomic<bool> any_nan{false};
  const std::vector<int64_t> hist = parallel_histogram(plan, kSelectBins, [&](size_t s, uint32_t* h) {
    if (UNLEARNX_ISA_DISPATCH(select_hist_top, ptr(s), dtype_of(s), plan.span_len(s), absolute, h))
      any_nan.store(true, std::memory_order_relaxed);
  });
  if (any_nan.load()) {
    for (size_t t = 0; t < xs.size(); ++t) {
      // error path only: find the first tensor holding a NaN
      bool found = false;
      for (int64_t s = 0; s < nspans && !found; ++s)
        if (static_cast<size_t>(plan.span_tensor[s]) == t) {
          std::vector<uint32_t> scratch(kSelectBins, 0);
          found = UNLEARNX_ISA_DISPATCH(select_hist_top, ptr(s), dtype_of(s), plan.span_len(s), absolute, scratch.data());
        }
      if (found) fail(item("xs", t) + " contains NaN; NaN has no rank (remove or replace it, e.g. torch.nan_to_num)");
    }
  }

  // the ks-th smallest key is the answer (k-th largest == (N - k + 1)-th smallest)
  const int64_t ks = largest ? N - k + 1 : k;
  const Located top = locate(hist, ks);
  const int shift = select_shift(absolute);
  uint32_t key = 0;
  int64_t n_less = 0, n_equal = 0;
  int64_t tie_span = -1, tie_offset = -1;  // position of the need-th tie (exact mode)
  auto need_of = [&]() { return largest ? k - (N - n_less - n_equal) : k - n_less; };

  const int64_t cap = std::max<int64_t>(N >> 8, 1 << 16);
  if (top.count <= cap) {
    // ---- pass 2a: collect the bucket's keys with their span offsets
    std::vector<uint32_t> span_count(static_cast<size_t>(nspans), 0);
    std::vector<TaskCandidates> tasks;
    std::mutex mu;
    torch::stable::parallel_for(0, nspans, 1, [&](int64_t s0, int64_t s1) {
      TaskCandidates tc;
      tc.first_span = s0;
      std::vector<uint32_t> keys(kSelectChunk);
      std::vector<uint16_t> offs(kSelectChunk);
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t c = UNLEARNX_ISA_DISPATCH(select_collect, ptr(s), dtype_of(s), plan.span_len(s), absolute,
                                                static_cast<uint32_t>(top.bucket), keys.data(), offs.data());
        span_count[s] = static_cast<uint32_t>(c);
        tc.keys.insert(tc.keys.end(), keys.begin(), keys.begin() + c);
        tc.offs.insert(tc.offs.end(), offs.begin(), offs.begin() + c);
      }
      std::lock_guard<std::mutex> lock(mu);
      tasks.push_back(std::move(tc));
    });
    std::sort(tasks.begin(), tasks.end(), [](const auto& a, const auto& b) { return a.first_span < b.first_span; });
    std::vector<uint32_t> all;
    all.reserve(static_cast<size_t>(top.count));
    for (const auto& tc : tasks) all.insert(all.end(), tc.keys.begin(), tc.keys.end());
    const int64_t r = ks - top.below;  // 1-based rank inside the bucket
    std::nth_element(all.begin(), all.begin() + (r - 1), all.end());
    key = all[static_cast<size_t>(r - 1)];
    n_less = top.below;
    for (uint32_t c : all) {
      n_less += c < key;
      n_equal += c == key;
    }
    if (exact) {
      // walk the candidates in list/flat order to the need-th tie
      int64_t need = need_of();
      for (const auto& tc : tasks) {
        size_t pos = 0;
        for (int64_t s = tc.first_span; pos < tc.keys.size(); ++s)
          for (uint32_t j = 0; j < span_count[s]; ++j, ++pos)
            if (tc.keys[pos] == key && --need == 0 && tie_span < 0) {
              tie_span = s;
              tie_offset = tc.offs[pos];
            }
      }
    }
  } else {
    // ---- pass 2b: low-bits histogram restricted to the bucket
    const uint32_t low_bins = select_low_bins(absolute);
    const std::vector<int64_t> low = parallel_histogram(plan, low_bins, [&](size_t s, uint32_t* h) {
      UNLEARNX_ISA_DISPATCH(select_hist_low, ptr(s), dtype_of(s), plan.span_len(s), absolute,
                            static_cast<uint32_t>(top.bucket), h);
    });
    const Located l = locate(low, ks - top.below);
    key = (static_cast<uint32_t>(top.bucket) << shift) | static_cast<uint32_t>(l.bucket);
    n_less = top.below + l.below;
    n_equal = l.count;
    if (exact) {
      // ---- pass 3 (only here): ties per span, then the span holding the need-th tie
      std::vector<int64_t> eq(static_cast<size_t>(nspans), 0);
      torch::stable::parallel_for(0, nspans, 1, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s)
          eq[s] = UNLEARNX_ISA_DISPATCH(select_count_equal, ptr(s), dtype_of(s), plan.span_len(s), absolute, key);
      });
      int64_t need = need_of();
      for (int64_t s = 0; s < nspans && tie_span < 0; ++s) {
        if (need > eq[s]) {
          need -= eq[s];
          continue;
        }
        tie_span = s;
        const int64_t n = plan.span_len(static_cast<size_t>(s));
        for (int64_t j = 0; j < n; ++j) {
          const int64_t c = UNLEARNX_ISA_DISPATCH(select_count_equal, ptr(s) + j * (dtype_of(s) == 0 ? 4 : 2),
                                                  dtype_of(s), 1, absolute, key);
          if (c && --need == 0) {
            tie_offset = j;
            break;
          }
        }
      }
    }
  }

  Tensor value = torch::stable::new_empty(xs[0], {}, ScalarType::Float);
  Tensor counts = torch::stable::new_empty(xs[0], {2}, ScalarType::Long);
  Tensor limits = torch::stable::new_empty(xs[0], {static_cast<int64_t>(xs.size())}, ScalarType::Long);
  *static_cast<float*>(value.mutable_data_ptr()) = value_of_key(key, absolute);
  auto* cnt = static_cast<int64_t*>(counts.mutable_data_ptr());
  cnt[0] = largest ? N - n_less - n_equal : n_less;
  cnt[1] = n_equal;
  auto* lim = static_cast<int64_t*>(limits.mutable_data_ptr());
  for (size_t t = 0; t < xs.size(); ++t) lim[t] = plan.numel[t];
  if (exact) {
    if (tie_span < 0) fail("internal error: tie position not found");
    const size_t tt = static_cast<size_t>(plan.span_tensor[tie_span]);
    for (size_t t = 0; t < xs.size(); ++t)
      lim[t] = t < tt ? plan.numel[t] : (t == tt ? plan.span_begin[tie_span] + tie_offset + 1 : 0);
  }
  return {value, counts, limits};
}

std::vector<Tensor> threshold_masks_cpu(std::vector<Tensor> xs, Tensor threshold, Tensor tie_limits, bool absolute,
                                        bool largest, bool packed) {
  const ListPlan plan = select_check_values(xs, "xs");
  masks_check_threshold(xs, threshold, tie_limits);
  const float t = *static_cast<const float*>(threshold.const_data_ptr());
  const auto* lim = static_cast<const int64_t*>(tie_limits.const_data_ptr());
  std::vector<Tensor> out;
  for (size_t i = 0; i < xs.size(); ++i)
    out.push_back(packed ? torch::stable::new_empty(xs[i], {packed_bytes(plan.numel[i])}, ScalarType::Byte)
                         : torch::stable::new_empty(xs[i], xs[i].sizes(), ScalarType::Bool));
  torch::stable::parallel_for(0, static_cast<int64_t>(plan.span_tensor.size()), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const size_t i = static_cast<size_t>(plan.span_tensor[s]);
      const int64_t b = plan.span_begin[s], n = plan.span_len(static_cast<size_t>(s));
      const char* x = static_cast<const char*>(xs[i].const_data_ptr()) + b * (plan.dtype[i] == 0 ? 4 : 2);
      auto* o = static_cast<uint8_t*>(out[i].mutable_data_ptr()) + (packed ? b / 8 : b);
      const int64_t tie_end = std::clamp<int64_t>(lim[i] - b, 0, n);
      UNLEARNX_ISA_DISPATCH(select_threshold_mask, x, plan.dtype[i], n, t, tie_end, absolute, largest, packed, o);
    }
  });
  return out;
}

Tensor mask_counts_cpu(std::vector<Tensor> masks) {
  std::vector<bool> packed;
  for (size_t i = 0; i < masks.size(); ++i) {
    const std::string n = item("masks", i);
    if (masks[i].scalar_type() != ScalarType::Bool && masks[i].scalar_type() != ScalarType::Byte)
      fail(n + " must be bool or uint8 (1-bit packed)");
    check_contiguous(masks[i], n);
    if (i) check_same_device(masks[i], n, masks[0], "masks[0]");
    packed.push_back(masks[i].scalar_type() == ScalarType::Byte);
  }
  Tensor out = masks.empty()
                   ? torch::stable::empty({0}, ScalarType::Long, std::nullopt,
                                          torch::stable::Device(torch::headeronly::DeviceType::CPU))
                   : torch::stable::new_empty(masks[0], {static_cast<int64_t>(masks.size())}, ScalarType::Long);
  auto* o = static_cast<int64_t*>(out.mutable_data_ptr());
  for (size_t i = 0; i < masks.size(); ++i) {
    const int64_t n = masks[i].numel();
    const auto* m = static_cast<const uint8_t*>(masks[i].const_data_ptr());
    std::atomic<int64_t> c{0};
    torch::stable::parallel_for(0, n, kSelectChunk * 4, [&](int64_t b, int64_t e) {
      c.fetch_add(UNLEARNX_ISA_DISPATCH(mask_count, m + b, e - b, packed[i]), std::memory_order_relaxed);
    });
    o[i] = c.load();
  }
  return out;
}

void masked_restore_cpu(std::vector<Tensor> params, std::vector<Tensor> originals, std::vector<Tensor> masks,
                        std::vector<Tensor> states, std::vector<int64_t> state_owner) {
  const RestorePlan plan = restore_check(params, originals, masks, states, state_owner);
  torch::stable::parallel_for(0, static_cast<int64_t>(plan.list.span_tensor.size()), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const size_t i = static_cast<size_t>(plan.list.span_tensor[s]);
      const int64_t b = plan.list.span_begin[s], n = plan.list.span_len(static_cast<size_t>(s));
      const bool pk = plan.packed[i];
      const auto* m = static_cast<const uint8_t*>(masks[i].const_data_ptr()) + (pk ? b / 8 : b);
      const int es = plan.elem[i];
      void* p = static_cast<char*>(params[i].mutable_data_ptr()) + b * es;
      const void* o = originals.empty() ? nullptr : static_cast<const char*>(originals[i].const_data_ptr()) + b * es;
      UNLEARNX_ISA_DISPATCH(masked_restore, p, o, m, pk, n, es);
      for (int64_t j : plan.states_of[i]) {
        const int ses = static_cast<int>(element_size(states[j].scalar_type()));
        UNLEARNX_ISA_DISPATCH(masked_restore, static_cast<char*>(states[j].mutable_data_ptr()) + b * ses, nullptr, m,
                              pk, n, ses);
      }
    }
  });
}

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CPU, m) {
  m.impl("global_select", TORCH_BOX(&global_select_cpu));
  m.impl("threshold_masks", TORCH_BOX(&threshold_masks_cpu));
  m.impl("mask_counts", TORCH_BOX(&mask_counts_cpu));
  m.impl("masked_restore_", TORCH_BOX(&masked_restore_cpu));
}

}  // namespace unlearnx
