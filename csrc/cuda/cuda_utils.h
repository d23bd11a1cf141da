// Small CUDA helpers on top of the stable ABI: the current stream and error checks.
#pragma once
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "../checks.h"

namespace unlearnx::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail(std::string(what) + ": " + cudaGetErrorString(err));
}

// torch's current stream for the device, through the AOTI C shim (stable since torch 2.9), so
// our kernels order correctly with the surrounding PyTorch work and need no synchronization.
inline cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  if (aoti_torch_get_current_cuda_stream(device_index, &stream) != AOTI_TORCH_SUCCESS)
    fail("could not get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

inline int sm_count(int device) {
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return n;
}

// Sums a per-thread count over the block and adds it to *out with one atomic per block.
__device__ inline void block_add_count(unsigned long long local, unsigned long long* out) {
  for (int off = 16; off > 0; off /= 2) local += __shfl_down_sync(0xffffffffu, local, off);
  __shared__ unsigned long long warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = local;
  __syncthreads();
  if (warp == 0) {
    local = lane < (blockDim.x + 31) / 32 ? warp_sums[lane] : 0ull;
    for (int off = 16; off > 0; off /= 2) local += __shfl_down_sync(0xffffffffu, local, off);
    if (lane == 0 && local) atomicAdd(out, local);
  }
}

}  // namespace unlearnx::cuda
