// Vector copies in CUDA kernels: `vec` consecutive elements in one 16-, 8- or 4-byte access, where the host
// (vector_width) found every address the kernel copies through aligned to it.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#if defined(ATTNKERN_CUDA_EMULATION)
#include "emulation/cuda_emulation.h"
#endif

namespace attnkern {

// The most elements a copy moves at once (16 bytes' worth, halved down to 1) that divide `n` — the length of
// the rows a kernel copies — with every pointer aligned to the copy.
inline int vector_width(int64_t n, int64_t element_bytes, std::initializer_list<const void*> pointers) {
  for (int vec = static_cast<int>(16 / element_bytes); vec > 1; vec /= 2) {
    const uintptr_t bytes = static_cast<uintptr_t>(vec * element_bytes);
    bool aligned = n % vec == 0;
    for (const void* p : pointers) aligned = aligned && reinterpret_cast<uintptr_t>(p) % bytes == 0;
    if (aligned) return vec;
  }
  return 1;
}

// f(std::integral_constant<int, vec>{}) for a runtime vec, a power of two ≤ kMax: kernels templated on their
// copy width.
template <int kMax, typename F>
void with_vector_width(int vec, F&& f) {
  if constexpr (kMax > 1) {
    if (vec < kMax) return with_vector_width<kMax / 2>(vec, std::forward<F>(f));
  }
  f(std::integral_constant<int, kMax>{});
}

template <int bytes>
struct alignas(bytes) Chunk {
  uint16_t element[bytes / 2];
};

template <int bytes, typename scalar_t>
__device__ __forceinline__ void copy_chunk(scalar_t* dst, const scalar_t* src) {
#if defined(ATTNKERN_CUDA_EMULATION)
  emulation::check_vector_copy(dst, src, bytes);
  std::memcpy(dst, src, bytes);  // the host compiler: no type punning
#else
  *reinterpret_cast<Chunk<bytes>*>(dst) = *reinterpret_cast<const Chunk<bytes>*>(src);
#endif
}

// How many elements p lies past a 16-byte boundary.
template <typename scalar_t>
__device__ __forceinline__ int offset_in_16_bytes(const scalar_t* p) {
  return static_cast<int>(reinterpret_cast<uintptr_t>(p) % 16 / sizeof(scalar_t));
}

// dst[0, vec) = src[0, vec), vec a power of two with vec·sizeof(scalar_t) ≤ 16 (vector_width's).
template <typename scalar_t>
__device__ __forceinline__ void copy_elements(scalar_t* dst, const scalar_t* src, int vec) {
  const int bytes = vec * static_cast<int>(sizeof(scalar_t));
  if (bytes == 16) copy_chunk<16>(dst, src);
  else if (bytes == 8) copy_chunk<8>(dst, src);
  else if (bytes == 4) copy_chunk<4>(dst, src);
  else *dst = *src;  // one element of 1 or 2 bytes
}

// dst[r·ldd + c] = src[r·lds + c] for r < rows, c < cols, by the threads of a (1-D) block: each row in pieces,
// 16 bytes a copy between its first and last 16-byte boundary, one element a copy before and after. dst must lie
// as far past a 16-byte boundary as src, and for more than one row ldd and lds must be multiples of 16 bytes (every
// row then as far past one as the first). A thread loads
// up to kBlockCopyInFlight pieces into registers before it stores any: that many requests in flight where a
// load and its store one after the other gave it one.
constexpr int kBlockCopyInFlight = 4;

template <typename scalar_t>
__device__ void block_copy_rows(scalar_t* dst, int ldd, const scalar_t* src, int lds, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int head = min(cols, (kVec - offset_in_16_bytes(src)) % kVec), chunks = (cols - head) / kVec;
  const int pieces = cols - chunks * (kVec - 1);  // head elements, chunks, tail elements
  const int stride = static_cast<int>(blockDim.x), row_step = stride / pieces, piece_step = stride % pieces;
  int row = threadIdx.x / pieces, piece = threadIdx.x % pieces;  // this thread's next piece, stepped by `stride`
  while (row < rows) {
    int at_row[kBlockCopyInFlight], at_col[kBlockCopyInFlight], width[kBlockCopyInFlight];
    alignas(16) scalar_t values[kBlockCopyInFlight][kVec];
#pragma unroll
    for (int u = 0; u < kBlockCopyInFlight; ++u) {
      const bool chunk = piece >= head && piece < head + chunks;
      at_row[u] = row;
      at_col[u] = piece < head ? piece : chunk ? head + (piece - head) * kVec : piece + chunks * (kVec - 1);
      width[u] = chunk ? kVec : 1;
      if (row < rows) copy_elements(values[u], src + row * lds + at_col[u], width[u]);
      row += row_step;
      piece += piece_step;
      if (piece >= pieces) {
        piece -= pieces;
        ++row;
      }
    }
#pragma unroll
    for (int u = 0; u < kBlockCopyInFlight; ++u) {
      if (at_row[u] < rows) copy_elements(dst + at_row[u] * ldd + at_col[u], values[u], width[u]);
    }
  }
}

// dst[0, n) = src[0, n) by the threads of a block (block_copy_rows, one row); dst as far past a 16-byte boundary
// as src.
template <typename scalar_t>
__device__ void block_copy(scalar_t* dst, const scalar_t* src, int n) {
  block_copy_rows(dst, n, src, n, 1, n);
}

}  // namespace attnkern
