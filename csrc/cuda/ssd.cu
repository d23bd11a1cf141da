// CUDA implementation of unlearnx::ssd_dampen_: one multi-tensor launch per 320 tensors, the
// tensor table passed as a kernel parameter (CUDA >= 12.1 allows 32 KiB of parameters), the
// selected count reduced per block and added atomically on the device: no host synchronization.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>

#include "../ssd_common.h"
#include "cuda_utils.h"
#include "unlearnx/ssd.h"

namespace unlearnx {
namespace {

constexpr int kMaxTensors = 320;
constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 16;  // elements per work item; never spans two tensors

struct SsdTable {
  void* theta[kMaxTensors];
  const float* forget[kMaxTensors];
  const float* full[kMaxTensors];
  int64_t numel[kMaxTensors];
  int64_t chunk_start[kMaxTensors + 1];  // prefix sum of chunks per tensor
  int ntensors;
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    ssd_dampen_kernel(const __grid_constant__ SsdTable table, float alpha, float lam, unsigned long long* count) {
  const int64_t total = table.chunk_start[table.ntensors];
  unsigned long long local = 0;
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    // the last tensor whose first chunk is <= c (empty tensors own no chunk)
    int lo = 0, hi = table.ntensors - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (table.chunk_start[mid] <= c) lo = mid; else hi = mid - 1;
    }
    const int64_t begin = (c - table.chunk_start[lo]) * kChunk;
    const int64_t n = min(kChunk, table.numel[lo] - begin);
    T* theta = static_cast<T*>(table.theta[lo]) + begin;
    const float* f = table.forget[lo] + begin;
    const float* d = table.full[lo] + begin;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const float fi = __ldg(f + i), di = __ldg(d + i);
      if (ssd_selected(fi, di, alpha)) {
        ++local;
        store_f32(theta + i, load_f32(theta + i) * ssd_factor(fi, di, lam));
      }
    }
  }
  cuda::block_add_count(local, count);
}

Tensor ssd_dampen_cuda(std::vector<Tensor> params, std::vector<Tensor> forget_importance,
                       std::vector<Tensor> full_importance, double alpha, double lam) {
  const SsdPlan plan = ssd_check_and_plan(params, forget_importance, full_importance);
  Tensor count = ssd_count_tensor(params);
  if (plan.total == 0) return count;
  const int device = params[0].get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  auto* out = static_cast<unsigned long long*>(count.mutable_data_ptr());
  static thread_local int sms = -1;
  if (sms < 0) sms = cuda::sm_count(device);
  for (size_t first = 0; first < params.size(); first += kMaxTensors) {
    SsdTable table{};
    table.ntensors = static_cast<int>(std::min<size_t>(kMaxTensors, params.size() - first));
    for (int j = 0; j < table.ntensors; ++j) {
      const size_t t = first + j;
      table.theta[j] = params[t].mutable_data_ptr();
      table.forget[j] = static_cast<const float*>(forget_importance[t].const_data_ptr());
      table.full[j] = static_cast<const float*>(full_importance[t].const_data_ptr());
      table.numel[j] = plan.numel[t];
      table.chunk_start[j + 1] = table.chunk_start[j] + (plan.numel[t] + kChunk - 1) / kChunk;
    }
    const int64_t chunks = table.chunk_start[table.ntensors];
    if (chunks == 0) continue;
    const int blocks = static_cast<int>(std::min<int64_t>(chunks, int64_t(sms) * 8));
    if (plan.bf16)
      ssd_dampen_kernel<bf16_bits><<<blocks, kThreads, 0, stream>>>(table, float(alpha), float(lam), out);
    else
      ssd_dampen_kernel<float><<<blocks, kThreads, 0, stream>>>(table, float(alpha), float(lam), out);
    cuda::check(cudaGetLastError(), "ssd_dampen_ kernel launch");
  }
  return count;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(unlearnx, CUDA, m) { m.impl("ssd_dampen_", TORCH_BOX(&ssd_dampen_cuda)); }

}  // namespace unlearnx
