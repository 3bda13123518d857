// CUDA launch helpers: every launch goes on the current stream and is followed by a launch check.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace attnkern {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Largest dynamic shared memory a block may opt in to on the current device.
inline int64_t max_shared_memory_optin() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

}  // namespace attnkern
