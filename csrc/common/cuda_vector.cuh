// Vector copies in CUDA kernels: `vec` consecutive elements in one 16-, 8- or 4-byte access, where the host
// (vector_width) found every address the kernel copies through aligned to it.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

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
  std::memcpy(dst, src, bytes);  // the host compiler: no type punning
#else
  *reinterpret_cast<Chunk<bytes>*>(dst) = *reinterpret_cast<const Chunk<bytes>*>(src);
#endif
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

}  // namespace attnkern
