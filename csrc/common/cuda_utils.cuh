// CUDA launch helpers: every launch goes on the current stream and is followed by a launch check.
//
// The .cu files are also compiled by the host compiler for the emulated device (-DATTNKERN_CUDA_EMULATION,
// csrc/emulation/cuda_emulation.h). The three CUDA constructs no macro can reach from outside are
// written with the macros below, which are the real thing under nvcc:
//   ATTNKERN_LAUNCH(grid, block, smem, stream, kernel)(args...)   kernel<<<grid, block, smem, stream>>>(args...)
//   ATTNKERN_DYNAMIC_SHARED(type, name);                          extern __shared__ type name[];
//   ATTNKERN_CUDA_KERNELS(m) { m.impl(...); }                     TORCH_LIBRARY_IMPL(attnkern, CUDA, m)
// (the kernel comes last in ATTNKERN_LAUNCH because its template arguments may hold commas). In the
// emulated build they launch on the emulator, use the block's emulated dynamic shared memory, and
// register the kernels as torch.ops.attnkern_emulated.* for CPU tensors.
#pragma once

#if defined(ATTNKERN_CUDA_EMULATION)
#include "emulation/cuda_emulation.h"  // before the c10/cuda headers, which are its stand-ins there
#endif

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#if defined(ATTNKERN_CUDA_EMULATION)
#define ATTNKERN_LAUNCH(grid, block, smem, stream, ...) \
  ::attnkern::emulation::make_launch(__VA_ARGS__, #__VA_ARGS__, __FILE__, grid, block, smem, stream)
#define ATTNKERN_DYNAMIC_SHARED(type, name) type* const name = ::attnkern::emulation::dynamic_shared_memory<type>()
#define ATTNKERN_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(attnkern_emulated, CPU, m)
#else
#define ATTNKERN_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define ATTNKERN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define ATTNKERN_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(attnkern, CUDA, m)
#endif

namespace attnkern {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The grid of a grid- or block-stride loop: `blocks`, capped (the loop takes the rest).
inline int64_t capped_blocks(int64_t blocks) {
  int64_t cap = int64_t(65535) * 16;
#if defined(ATTNKERN_CUDA_EMULATION)
  cap = emulation::grid_stride_block_cap(cap);  // tests lower it to make small grid-stride loops wrap
#endif
  return std::min<int64_t>(blocks, cap);
}

// Element-wise kernels: kElementThreads threads a block, a grid-stride loop over `total` elements.
constexpr int kElementThreads = 256;

inline int64_t element_blocks(int64_t total) { return capped_blocks(ceil_div(total, kElementThreads)); }

#define ATTNKERN_GRID_STRIDE_LOOP(idx, total)                                                      \
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < (total); \
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Row kernels: a block a row of `length` elements (row_threads: the warps that cover it, at most
// kElementThreads), a block-stride loop over the rows (row_blocks of them).
inline int row_threads(int64_t length) {
  return static_cast<int>(std::min<int64_t>(ceil_div(std::max<int64_t>(length, 1), 32) * 32, kElementThreads));
}

inline int64_t row_blocks(int64_t rows) { return capped_blocks(rows); }

#define ATTNKERN_BLOCK_STRIDE_LOOP(row, rows) for (int64_t row = blockIdx.x; row < (rows); row += gridDim.x)

// A warp-stride loop over rows, a warp a row (blockDim.x a multiple of 32: a warp's lanes share the row, so
// the row's shuffles see all 32): warp_blocks(rows) blocks of kElementThreads, capped.
#define ATTNKERN_WARP_STRIDE_LOOP(row, rows)                                                              \
  for (int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; row < (rows); \
       row += static_cast<int64_t>(gridDim.x) * blockDim.x / 32)

inline int64_t warp_blocks(int64_t rows) { return capped_blocks(ceil_div(rows, kElementThreads / 32)); }

// An attribute of the current device.
inline int current_device_attribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

// Largest dynamic shared memory a block may opt in to on the current device.
inline int64_t max_shared_memory_optin() {
  return current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
}

// Whether the current device runs mma.sync.m16n8k16 and ldmatrix (compute capability 8.0 or newer).
inline bool has_tensor_core_mma() { return current_device_attribute(cudaDevAttrComputeCapabilityMajor) >= 8; }

// Lets `kernel` launch with `bytes` of dynamic shared memory (beyond the default 48 KiB, up to the opt-in limit).
template <typename Kernel>
void allow_smem(Kernel kernel, int64_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Reductions over the block (blockDim.x a power of two, `scratch` blockDim.x elements of shared
// memory); every thread gets the result, and the block may reuse `scratch` right after.
template <typename acc_t, typename Combine>
__device__ acc_t block_reduce(acc_t value, acc_t* scratch, Combine combine) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) scratch[threadIdx.x] = combine(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
    __syncthreads();
  }
  acc_t total = scratch[0];
  __syncthreads();
  return total;
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t value, acc_t* scratch) {
  return block_reduce(value, scratch, [](acc_t a, acc_t b) { return a + b; });
}

// Reductions over a warp (all 32 lanes): a butterfly of shuffles, after which every lane holds the same
// result (each step combines two equal-ordered partials, and a + b = b + a).
template <typename acc_t, typename Combine>
__device__ acc_t warp_reduce(acc_t value, Combine combine) {
  for (int lane_mask = 16; lane_mask > 0; lane_mask /= 2) {
    value = combine(value, __shfl_xor_sync(0xffffffffu, value, lane_mask));
  }
  return value;
}

template <typename acc_t>
__device__ acc_t warp_sum(acc_t value) {
  return warp_reduce(value, [](acc_t a, acc_t b) { return a + b; });
}

template <typename acc_t>
__device__ acc_t warp_max(acc_t value) {
  return warp_reduce(value, [](acc_t a, acc_t b) { return a > b ? a : b; });
}

// 2^x by the SFU's ex2.approx.ftz.f32 (relative error ≤ 2⁻²²; results below 2⁻¹²⁶ flushed to 0): one MUFU.EX2,
// where exp2f adds the scaling that keeps its subnormal results. For softmax weights, whose largest is 1.
__device__ __forceinline__ float exp2_ftz(float x) {
#if defined(ATTNKERN_CUDA_EMULATION)
  const float y = std::exp2(x);
  return y < FLT_MIN ? 0.f : y;
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// exp(x − m) as exp2(x·log2 e − m_log2e), m_log2e = m·log2 e: one FFMA and the SFU's ex2 (exp2_ftz), where
// expf spends about 8 more instructions on its range reduction (FlashAttention's softmax). For softmax weights
// rounded to 16 bits: the relative error, ~|m|·2⁻²⁴ + 2⁻²², is far below that rounding, and the weights it
// flushes to 0 (below 2⁻¹²⁶ of the row's largest) are below what 16 bits keep beside it.
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float exp_minus(float x, float m_log2e) { return exp2_ftz(fmaf(x, kLog2e, -m_log2e)); }

// exp(x − m) for softmax weights kept in float (x ≤ m): ex2 of (x − m)·log2 e, an FADD and an FMUL before the
// SFU's ex2 — one instruction more than exp_minus, for exactly 1 at x = m (a single position's weight, whose
// gradient then cancels to exactly 0) and a relative error of ~|x − m|·2⁻²⁴ + 2⁻²². double: exp.
__device__ __forceinline__ float exp_difference(float x, float m) { return exp2_ftz((x - m) * kLog2e); }
__device__ __forceinline__ double exp_difference(double x, double m) { return exp(x - m); }

}  // namespace attnkern
