// CUDA implementation of the selection ops (schemas in csrc/registration.cpp).
//
// global_select: radix select in three digit passes of 11/11/10 bits over the order-preserving
// keys (unlearnx/select.h): each pass builds a shared-memory histogram per block of the digit of
// the elements whose higher digits match the prefix found so far, flushed to a global int64
// histogram; a one-thread kernel then picks the digit holding the rank on the device. Work items
// are chunks of one tensor, found by binary search in a device-side table, so any number of
// tensors and > 2^32 elements in all are handled by every launch (all counts are 64-bit). The only
// host synchronization is the NaN check after the first pass (a NaN must raise an error).
// Exact-count tie limits: per-chunk tie counts, then one block finds the chunk and offset of the
// need-th tie in list/flat order.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "../select_common.h"
#include "cuda_utils.h"
#include "unlearnx/select.h"

namespace unlearnx {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per work item; a multiple of 8 (packed bytes)
__host__ __device__ constexpr int digit_bits(int level) { return level == 2 ? 10 : 11; }
__host__ __device__ constexpr int digit_shift(int level) { return level == 0 ? 21 : (level == 1 ? 10 : 0); }
constexpr int kHistBins = 2048;

// Device-side list table (int64 words): per tensor pointer, numel, dtype code, first chunk; then
// the total chunk count. Layout offsets below are in words.
struct Table {
  const int64_t* ptr;
  const int64_t* numel;
  const int64_t* dtype;
  const int64_t* chunk_start;  // [L + 1]
  int ntensors;
};

// Workspace header (int64 words).
enum : int { kPrefix = 0, kRank, kBelow, kEqual, kNanTensor, kNeed, kTieTensor, kTieIndex, kHeader = 8 };

__device__ __forceinline__ int find_tensor(const Table& t, int64_t c) {
  int lo = 0, hi = t.ntensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t.chunk_start[mid] <= c) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ uint32_t load_bits_any(const void* base, int dtype, int64_t i) {
  switch (dtype) {
    case 1: return load_bits(static_cast<const bf16_bits*>(base) + i);
    case 2: return load_bits(static_cast<const f16_bits*>(base) + i);
    default: return load_bits(static_cast<const float*>(base) + i);
  }
}

__global__ void __launch_bounds__(kThreads)
    radix_hist_kernel(Table t, int64_t* ws, unsigned long long* hist, int level, bool absolute) {
  __shared__ unsigned int sh[kHistBins];
  for (int b = threadIdx.x; b < kHistBins; b += kThreads) sh[b] = 0;
  __syncthreads();
  const uint32_t prefix = static_cast<uint32_t>(ws[kPrefix]);
  const int shift = digit_shift(level);
  const uint32_t digit_mask = (1u << digit_bits(level)) - 1u;
  const int hi_shift = shift + digit_bits(level);  // bits above this digit must match the prefix
  const int64_t total = t.chunk_start[t.ntensors];
  int nan_tensor = INT_MAX;
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    const int ti = find_tensor(t, c);
    const int64_t begin = (c - t.chunk_start[ti]) * kChunk;
    const int64_t n = min(kChunk, t.numel[ti] - begin);
    const void* base = reinterpret_cast<const void*>(t.ptr[ti]);
    const int dtype = static_cast<int>(t.dtype[ti]);
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const uint32_t u = load_bits_any(base, dtype, begin + i);
      if (level == 0 && bits_is_nan(u)) nan_tensor = min(nan_tensor, ti);
      const uint32_t key = key_of_bits(u, absolute);
      if (hi_shift >= 32 || ((key ^ prefix) >> hi_shift) == 0u) atomicAdd(&sh[(key >> shift) & digit_mask], 1u);
    }
  }
  if (level == 0 && nan_tensor != INT_MAX)
    atomicMin(reinterpret_cast<unsigned long long*>(ws + kNanTensor), static_cast<unsigned long long>(nan_tensor));
  __syncthreads();
  for (int b = threadIdx.x; b < kHistBins; b += kThreads)
    if (sh[b]) atomicAdd(hist + b, static_cast<unsigned long long>(sh[b]));
}

// One thread: the digit holding the remaining rank; extends the prefix.
__global__ void radix_pick_kernel(int64_t* ws, const unsigned long long* hist, int level) {
  int64_t rank = ws[kRank], below = 0;
  const int bins = 1 << digit_bits(level);
  int d = 0;
  for (; d < bins - 1; ++d) {
    const int64_t h = static_cast<int64_t>(hist[d]);
    if (below + h >= rank) break;
    below += h;
  }
  ws[kPrefix] |= static_cast<int64_t>(d) << digit_shift(level);
  ws[kRank] = rank - below;
  ws[kBelow] += below;
  ws[kEqual] = static_cast<int64_t>(hist[d]);
}

__global__ void __launch_bounds__(kThreads)
    tie_count_kernel(Table t, const int64_t* ws, int64_t* chunk_ties, bool absolute) {
  const uint32_t key = static_cast<uint32_t>(ws[kPrefix]);
  const int64_t total = t.chunk_start[t.ntensors];
  __shared__ unsigned int count;
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    const int ti = find_tensor(t, c);
    const int64_t begin = (c - t.chunk_start[ti]) * kChunk;
    const int64_t n = min(kChunk, t.numel[ti] - begin);
    const void* base = reinterpret_cast<const void*>(t.ptr[ti]);
    unsigned int local = 0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads)
      local += key_of_bits(load_bits_any(base, static_cast<int>(t.dtype[ti]), begin + i), absolute) == key;
    if (local) atomicAdd(&count, local);
    __syncthreads();
    if (threadIdx.x == 0) chunk_ties[c] = count;
    __syncthreads();
  }
}

// One block of kFind threads: the chunk holding the need-th tie (list/flat order), then its offset.
constexpr int kFind = 1024;
__global__ void __launch_bounds__(kFind)
    tie_find_kernel(Table t, int64_t* ws, const int64_t* chunk_ties, bool absolute) {
  __shared__ int64_t part[kFind];
  __shared__ int64_t found_chunk, need_left;
  const int64_t total = t.chunk_start[t.ntensors];
  const int64_t per = (total + kFind - 1) / kFind;
  const int64_t c0 = min(total, threadIdx.x * per), c1 = min(total, c0 + per);
  int64_t s = 0;
  for (int64_t c = c0; c < c1; ++c) s += chunk_ties[c];
  part[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t need = ws[kNeed];
    int seg = 0;
    while (seg < kFind - 1 && need > part[seg]) need -= part[seg++];
    int64_t c = min(total, seg * per);
    while (c < total - 1 && need > chunk_ties[c]) need -= chunk_ties[c++];
    found_chunk = c;
    need_left = need;
  }
  __syncthreads();
  const int64_t c = found_chunk;
  const int ti = find_tensor(t, c);
  const int64_t begin = (c - t.chunk_start[ti]) * kChunk;
  const int64_t n = min(kChunk, t.numel[ti] - begin);
  const void* base = reinterpret_cast<const void*>(t.ptr[ti]);
  const uint32_t key = static_cast<uint32_t>(ws[kPrefix]);
  // each thread owns a contiguous run of the chunk; a block prefix sum locates the tie
  constexpr int64_t kPer = (kChunk + kFind - 1) / kFind;
  const int64_t i0 = min(n, threadIdx.x * kPer), i1 = min(n, i0 + kPer);
  int64_t mine = 0;
  for (int64_t i = i0; i < i1; ++i) mine += key_of_bits(load_bits_any(base, static_cast<int>(t.dtype[ti]), begin + i), absolute) == key;
  part[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int j = 1; j < kFind; ++j) part[j] += part[j - 1];
  __syncthreads();
  const int64_t before = threadIdx.x ? part[threadIdx.x - 1] : 0;
  if (need_left > before && need_left <= part[threadIdx.x]) {
    int64_t left = need_left - before;
    for (int64_t i = i0; i < i1; ++i)
      if (key_of_bits(load_bits_any(base, static_cast<int>(t.dtype[ti]), begin + i), absolute) == key && --left == 0) {
        ws[kTieTensor] = ti;
        ws[kTieIndex] = begin + i;
        break;
      }
  }
}

// Writes the outputs: value, (beyond, equal), tie limits (exact) or numels.
__global__ void select_output_kernel(Table t, int64_t* ws, float* value, int64_t* counts, int64_t* limits,
                                     int64_t n_total, bool absolute, bool largest, bool exact) {
  const int64_t n_less = ws[kBelow], n_equal = ws[kEqual];
  if (threadIdx.x == 0) {
    *value = value_of_key(static_cast<uint32_t>(ws[kPrefix]), absolute);
    counts[0] = largest ? n_total - n_less - n_equal : n_less;
    counts[1] = n_equal;
  }
  const int64_t tt = ws[kTieTensor], tie = ws[kTieIndex];
  for (int i = threadIdx.x; i < t.ntensors; i += blockDim.x)
    limits[i] = !exact ? t.numel[i] : (i < tt ? t.numel[i] : (i == tt ? tie + 1 : 0));
}

// need = k - #beyond, computed on the device after the last pick
__global__ void tie_need_kernel(int64_t* ws, int64_t n_total, int64_t k, bool largest) {
  const int64_t n_less = ws[kBelow], n_equal = ws[kEqual];
  ws[kNeed] = largest ? k - (n_total - n_less - n_equal) : k - n_less;
}

// Builds the device table: a host image copied once into the workspace tensor.
struct DeviceTable {
  Tensor buf;
  Table table;
  int64_t chunks = 0;
};

DeviceTable make_table(const std::vector<Tensor>& xs, const ListPlan& plan, int64_t extra_words, int64_t& extra_at,
                       cudaStream_t stream) {
  const int64_t L = static_cast<int64_t>(xs.size());
  std::vector<int64_t> host(static_cast<size_t>(4 * L + 1), 0);
  int64_t* ptr = host.data();
  int64_t* numel = ptr + L;
  int64_t* dtype = numel + L;
  int64_t* cs = dtype + L;
  for (int64_t i = 0; i < L; ++i) {
    ptr[i] = reinterpret_cast<int64_t>(xs[i].const_data_ptr());
    numel[i] = plan.numel[i];
    dtype[i] = plan.dtype[i];
    cs[i + 1] = cs[i] + (plan.numel[i] + kChunk - 1) / kChunk;
  }
  DeviceTable dt;
  dt.chunks = cs[L];
  extra_at = static_cast<int64_t>(host.size());
  dt.buf = torch::stable::new_empty(xs[0], {extra_at + extra_words}, ScalarType::Long);
  auto* d = static_cast<int64_t*>(dt.buf.mutable_data_ptr());
  cuda::check(cudaMemcpyAsync(d, host.data(), host.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream),
              "global_select table copy");
  dt.table = Table{d, d + L, d + 2 * L, d + 3 * L, static_cast<int>(L)};
  return dt;
}

int grid_for(int64_t chunks, int device) {
  static thread_local int sms = -1;
  if (sms < 0) sms = cuda::sm_count(device);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(chunks, int64_t(sms) * 8)));
}

std::tuple<Tensor, Tensor, Tensor> global_select_cuda(std::vector<Tensor> xs, int64_t k, bool absolute, bool largest,
                                                      bool exact) {
  const ListPlan plan = select_check_values(xs, "xs");
  select_check_k(k, plan.total);
  const int device = xs[0].get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  const int64_t N = plan.total;

  // workspace: header, three histograms, per-chunk tie counts
  int64_t chunks_guess = 0;
  for (int64_t n : plan.numel) chunks_guess += (n + kChunk - 1) / kChunk;
  const int64_t extra = kHeader + 3 * kHistBins + (exact ? chunks_guess : 0);
  int64_t at = 0;
  DeviceTable dt = make_table(xs, plan, extra, at, stream);
  int64_t* ws = static_cast<int64_t*>(dt.buf.mutable_data_ptr()) + at;
  auto* hist = reinterpret_cast<unsigned long long*>(ws + kHeader);
  const int64_t ks = largest ? N - k + 1 : k;
  const int64_t header[kHeader] = {0, ks, 0, 0, INT_MAX, 0, -1, -1};
  cuda::check(cudaMemcpyAsync(ws, header, sizeof header, cudaMemcpyHostToDevice, stream), "global_select header");
  cuda::check(cudaMemsetAsync(hist, 0, 3 * kHistBins * sizeof(int64_t), stream), "global_select memset");
  const int grid = grid_for(dt.chunks, device);
  for (int level = 0; level < 3; ++level) {
    radix_hist_kernel<<<grid, kThreads, 0, stream>>>(dt.table, ws, hist + level * kHistBins, level, absolute);
    cuda::check(cudaGetLastError(), "global_select histogram launch");
    if (level == 0) {
      int64_t nan_tensor = 0;
      cuda::check(cudaMemcpyAsync(&nan_tensor, ws + kNanTensor, sizeof nan_tensor, cudaMemcpyDeviceToHost, stream),
                  "global_select NaN flag");
      cuda::check(cudaStreamSynchronize(stream), "global_select NaN check");
      if (nan_tensor != INT_MAX)
        fail(item("xs", static_cast<size_t>(nan_tensor)) +
             " contains NaN; NaN has no rank (remove or replace it, e.g. torch.nan_to_num)");
    }
    radix_pick_kernel<<<1, 1, 0, stream>>>(ws, hist + level * kHistBins, level);
    cuda::check(cudaGetLastError(), "global_select pick launch");
  }
  if (exact) {
    int64_t* chunk_ties = ws + kHeader + 3 * kHistBins;
    tie_need_kernel<<<1, 1, 0, stream>>>(ws, N, k, largest);
    tie_count_kernel<<<grid, kThreads, 0, stream>>>(dt.table, ws, chunk_ties, absolute);
    tie_find_kernel<<<1, kFind, 0, stream>>>(dt.table, ws, chunk_ties, absolute);
    cuda::check(cudaGetLastError(), "global_select tie launch");
  }
  Tensor value = torch::stable::new_empty(xs[0], {}, ScalarType::Float);
  Tensor counts = torch::stable::new_empty(xs[0], {2}, ScalarType::Long);
  Tensor limits = torch::stable::new_empty(xs[0], {static_cast<int64_t>(xs.size())}, ScalarType::Long);
  select_output_kernel<<<1, kThreads, 0, stream>>>(dt.table, ws, static_cast<float*>(value.mutable_data_ptr()),
                                                    static_cast<int64_t*>(counts.mutable_data_ptr()),
                                                    static_cast<int64_t*>(limits.mutable_data_ptr()), N, absolute,
                                                    largest, exact);
  cuda::check(cudaGetLastError(), "global_select output launch");
  // dt.buf is freed through torch's caching allocator in stream order: safe without a sync
  return {value, counts, limits};
}

// ---- threshold masks, one element (or one packed byte) per thread, over the chunk table

__global__ void __launch_bounds__(kThreads)
    mask_kernel(Table t, const int64_t* out_ptrs, const float* threshold, const int64_t* limits, bool absolute,
                bool largest, bool packed) {
  const float th = *threshold;
  const int64_t total = t.chunk_start[t.ntensors];
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    const int ti = find_tensor(t, c);
    const int64_t begin = (c - t.chunk_start[ti]) * kChunk;
    const int64_t n = min(kChunk, t.numel[ti] - begin);
    const void* base = reinterpret_cast<const void*>(t.ptr[ti]);
    const int dtype = static_cast<int>(t.dtype[ti]);
    const int64_t limit = limits[ti];
    auto* out = reinterpret_cast<uint8_t*>(out_ptrs[ti]);
    if (!packed) {
      for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        const int64_t j = begin + i;
        out[j] = mask_keep(bits_to_float(load_bits_any(base, dtype, j)), th, j, limit, absolute, largest);
      }
    } else {
      for (int64_t b = threadIdx.x; b < (n + 7) / 8; b += kThreads) {
        uint8_t byte = 0;
        for (int e = 0; e < 8; ++e) {
          const int64_t i = b * 8 + e;
          if (i < n) {
            const int64_t j = begin + i;
            byte |= uint8_t(mask_keep(bits_to_float(load_bits_any(base, dtype, j)), th, j, limit, absolute, largest)) << e;
          }
        }
        out[begin / 8 + b] = byte;
      }
    }
  }
}

std::vector<Tensor> threshold_masks_cuda(std::vector<Tensor> xs, Tensor threshold, Tensor tie_limits, bool absolute,
                                         bool largest, bool packed) {
  const ListPlan plan = select_check_values(xs, "xs");
  masks_check_threshold(xs, threshold, tie_limits);
  const int device = xs[0].get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  std::vector<Tensor> out;
  for (size_t i = 0; i < xs.size(); ++i)
    out.push_back(packed ? torch::stable::new_empty(xs[i], {packed_bytes(plan.numel[i])}, ScalarType::Byte)
                         : torch::stable::new_empty(xs[i], xs[i].sizes(), ScalarType::Bool));
  const int64_t L = static_cast<int64_t>(xs.size());
  int64_t at = 0;
  DeviceTable dt = make_table(xs, plan, L, at, stream);
  std::vector<int64_t> ptrs(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) ptrs[i] = reinterpret_cast<int64_t>(out[i].mutable_data_ptr());
  int64_t* d_out = static_cast<int64_t*>(dt.buf.mutable_data_ptr()) + at;
  cuda::check(cudaMemcpyAsync(d_out, ptrs.data(), L * sizeof(int64_t), cudaMemcpyHostToDevice, stream),
              "threshold_masks table copy");
  if (dt.chunks)
    mask_kernel<<<grid_for(dt.chunks, device), kThreads, 0, stream>>>(
        dt.table, d_out, static_cast<const float*>(threshold.const_data_ptr()),
        static_cast<const int64_t*>(tie_limits.const_data_ptr()), absolute, largest, packed);
  cuda::check(cudaGetLastError(), "threshold_masks launch");
  return out;
}

// ---- mask counts: one launch per mask (masks are few and large), block sums + one atomic

__global__ void __launch_bounds__(kThreads)
    mask_count_kernel(const uint8_t* m, int64_t nbytes, bool packed, unsigned long long* out) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < nbytes; i += int64_t(gridDim.x) * kThreads)
    local += packed ? __popc(m[i]) : (m[i] != 0);
  cuda::block_add_count(local, out);
}

Tensor mask_counts_cuda(std::vector<Tensor> masks) {
  for (size_t i = 0; i < masks.size(); ++i) {
    const std::string n = item("masks", i);
    if (masks[i].scalar_type() != ScalarType::Bool && masks[i].scalar_type() != ScalarType::Byte)
      fail(n + " must be bool or uint8 (1-bit packed)");
    check_contiguous(masks[i], n);
    check_same_device(masks[i], n, masks[0], "masks[0]");
  }
  if (masks.empty())
    return torch::stable::empty({0}, ScalarType::Long, std::nullopt,
                                torch::stable::Device(torch::headeronly::DeviceType::CPU));
  const int device = masks[0].get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  Tensor out = torch::stable::new_zeros(masks[0], {static_cast<int64_t>(masks.size())}, ScalarType::Long);
  auto* o = static_cast<unsigned long long*>(out.mutable_data_ptr());
  for (size_t i = 0; i < masks.size(); ++i) {
    const int64_t n = masks[i].numel();
    if (!n) continue;
    const int blocks = grid_for((n + kChunk - 1) / kChunk, device);
    mask_count_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint8_t*>(masks[i].const_data_ptr()), n,
                                                       masks[i].scalar_type() == ScalarType::Byte, o + i);
    cuda::check(cudaGetLastError(), "mask_counts launch");
  }
  return out;
}

// ---- masked restore: targets = params then states; each has a source (original or none) and a mask

struct RestoreTable {
  const int64_t* dst;      // [T] pointers
  const int64_t* src;      // [T] pointers (0: restore to zero)
  const int64_t* mask;     // [T] pointers
  const int64_t* numel;    // [T]
  const int64_t* meta;     // [T] element size | packed << 8
  const int64_t* chunk_start;  // [T + 1]
  int ntargets;
};

template <typename U>
__device__ __forceinline__ void restore_elems(U* p, const U* o, const uint8_t* m, bool packed, int64_t begin,
                                              int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const int64_t j = begin + i;
    const bool keep = packed ? ((m[j >> 3] >> (j & 7)) & 1) : (m[j] != 0);
    if (!keep) p[j] = o ? o[j] : U(0);
  }
}

__global__ void __launch_bounds__(kThreads) restore_kernel(RestoreTable t) {
  const int64_t total = t.chunk_start[t.ntargets];
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    int lo = 0, hi = t.ntargets - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (t.chunk_start[mid] <= c) lo = mid; else hi = mid - 1;
    }
    const int64_t begin = (c - t.chunk_start[lo]) * kChunk;
    const int64_t n = min(kChunk, t.numel[lo] - begin);
    const int es = static_cast<int>(t.meta[lo] & 0xff);
    const bool packed = (t.meta[lo] >> 8) & 1;
    const auto* m = reinterpret_cast<const uint8_t*>(t.mask[lo]);
    void* p = reinterpret_cast<void*>(t.dst[lo]);
    const void* o = reinterpret_cast<const void*>(t.src[lo]);
    if (es == 2) restore_elems(static_cast<uint16_t*>(p), static_cast<const uint16_t*>(o), m, packed, begin, n);
    else if (es == 8) restore_elems(static_cast<uint64_t*>(p), static_cast<const uint64_t*>(o), m, packed, begin, n);
    else restore_elems(static_cast<uint32_t*>(p), static_cast<const uint32_t*>(o), m, packed, begin, n);
  }
}

void masked_restore_cuda(std::vector<Tensor> params, std::vector<Tensor> originals, std::vector<Tensor> masks,
                         std::vector<Tensor> states, std::vector<int64_t> state_owner) {
  const RestorePlan plan = restore_check(params, originals, masks, states, state_owner);
  if (params.empty()) return;
  const int device = params[0].get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  const int64_t T = static_cast<int64_t>(params.size() + states.size());
  std::vector<int64_t> host(static_cast<size_t>(6 * T + 1), 0);
  int64_t *dst = host.data(), *src = dst + T, *msk = src + T, *numel = msk + T, *meta = numel + T, *cs = meta + T;
  for (int64_t j = 0; j < T; ++j) {
    const bool is_param = j < static_cast<int64_t>(params.size());
    const size_t i = is_param ? static_cast<size_t>(j) : static_cast<size_t>(state_owner[j - params.size()]);
    const Tensor& target = is_param ? params[i] : states[j - params.size()];
    dst[j] = reinterpret_cast<int64_t>(target.const_data_ptr());
    src[j] = (is_param && !originals.empty()) ? reinterpret_cast<int64_t>(originals[i].const_data_ptr()) : 0;
    msk[j] = reinterpret_cast<int64_t>(masks[i].const_data_ptr());
    numel[j] = target.numel();
    meta[j] = element_size(target.scalar_type()) | (int64_t(plan.packed[i]) << 8);
    cs[j + 1] = cs[j] + (numel[j] + kChunk - 1) / kChunk;
  }
  if (cs[T] == 0) return;
  Tensor buf = torch::stable::new_empty(params[0], {static_cast<int64_t>(host.size())}, ScalarType::Long);
  auto* d = static_cast<int64_t*>(buf.mutable_data_ptr());
  cuda::check(cudaMemcpyAsync(d, host.data(), host.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream),
              "masked_restore_ table copy");
  RestoreTable t{d, d + T, d + 2 * T, d + 3 * T, d + 4 * T, d + 5 * T, static_cast<int>(T)};
  restore_kernel<<<grid_for(cs[T], device), kThreads, 0, stream>>>(t);
  cuda::check(cudaGetLastError(), "masked_restore_ launch");
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CUDA, m) {
  m.impl("global_select", TORCH_BOX(&global_select_cuda));
  m.impl("threshold_masks", TORCH_BOX(&threshold_masks_cuda));
  m.impl("mask_counts", TORCH_BOX(&mask_counts_cuda));
  m.impl("masked_restore_", TORCH_BOX(&masked_restore_cuda));
}

}  // namespace unlearnx
