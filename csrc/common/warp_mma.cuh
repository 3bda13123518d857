// Tensor-core building blocks for one warp: mma.sync.m16n8k16 (fp16 or bf16 operands, fp32
// accumulators) and ldmatrix, as inline PTX under nvcc (sm_80 and newer) and as the warp collectives of
// the emulated device (csrc/emulation/cuda_emulation.h) in the emulated build.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"; g = lane / 4, t = lane % 4):
//   A 16×16 (row-major): 4 registers of 2 elements: rows g (registers 0, 2) and g + 8 (1, 3), columns
//                        2t, 2t + 1 (registers 0, 1) and 2t + 8, 2t + 9 (2, 3)
//   B 16×8 (k × n):      2 registers: rows 2t, 2t + 1 (register 0) and 2t + 8, 2t + 9 (1), column g
//   C, D 16×8 (float):   c0, c1 at row g, columns 2t, 2t + 1; c2, c3 at row g + 8
// A row of an A or C tile is held by the 4 lanes of a group (lanes 4g … 4g + 3): a reduction along a row
// is two __shfl_xor_sync steps (offsets 1 and 2). Two C tiles side by side (16×16) are, element for
// element, the A fragment of the next product: FlashAttention's P·V straight from registers.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/cuda_utils.cuh"

namespace attnkern {
namespace tensor_core {

// The element types the tensor-core kernels take (the others stay on the CUDA-core kernels).
template <typename T>
constexpr bool is_mma_element = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// Two elements in one register, `lo` in the low 16 bits (the order of consecutive columns in a fragment).
template <typename T>
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  static_assert(is_mma_element<T>);
  const T a = static_cast<T>(lo), b = static_cast<T>(hi);  // round to nearest even
  return static_cast<uint32_t>(a.x) | (static_cast<uint32_t>(b.x) << 16);
}

// d += a·b over the warp, a 16×16 and b 16×8 of element type T.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(is_mma_element<T>);
#if defined(ATTNKERN_CUDA_EMULATION)
  const auto elem = std::is_same_v<T, c10::BFloat16> ? emulation::MmaElement::kBFloat16 : emulation::MmaElement::kHalf;
  emulation::mma_m16n8k16(elem, d, a, b, d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // the host code launches tensor-core kernels on sm_80 and newer only
#endif
}

// ldmatrix.sync.aligned.m8n8.x<count>[.trans].shared.b16: `count` 8×8 matrices of 16-bit elements from
// shared memory; lanes 8m … 8m + 7 give the addresses of the rows of matrix m (16-byte aligned), and
// register m of every lane receives two elements of matrix m: row lane / 4, columns 2(lane % 4) and
// 2(lane % 4) + 1 — or, transposed, rows 2(lane % 4) and 2(lane % 4) + 1 of column lane / 4.
template <int count, bool transpose = false>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[count], const void* row_address) {
  static_assert(count == 1 || count == 2 || count == 4);
#if defined(ATTNKERN_CUDA_EMULATION)
  const unsigned char* rows[32];
  emulation::ldmatrix_rows(count, row_address, rows);
  const int lane = emulation::lane_id();
  for (int m = 0; m < count; ++m) {
    uint16_t element[2];
    for (int e = 0; e < 2; ++e) {
      const int row = transpose ? 2 * (lane % 4) + e : lane / 4, col = transpose ? lane / 4 : 2 * (lane % 4) + e;
      std::memcpy(&element[e], rows[8 * m + row] + 2 * col, sizeof(uint16_t));  // the kernel's own shared-memory read
    }
    r[m] = static_cast<uint32_t>(element[0]) | (static_cast<uint32_t>(element[1]) << 16);
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(row_address));
  if constexpr (count == 4 && !transpose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
  } else if constexpr (count == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
  } else if constexpr (count == 2 && !transpose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
  } else if constexpr (count == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
  } else if constexpr (!transpose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(address));
  }
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// The largest and the sum of the values a row of a fragment holds in the 4 lanes of its group.
__device__ __forceinline__ float group_max(float value) {
  value = max(value, __shfl_xor_sync(0xffffffffu, value, 1));
  return max(value, __shfl_xor_sync(0xffffffffu, value, 2));
}

__device__ __forceinline__ float group_sum(float value) {
  value += __shfl_xor_sync(0xffffffffu, value, 1);
  return value + __shfl_xor_sync(0xffffffffu, value, 2);
}

}  // namespace tensor_core
}  // namespace attnkern
