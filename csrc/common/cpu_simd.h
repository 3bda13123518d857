// Vectorised CPU inner loops without per-ISA builds.
//
// A function marked ATTNKERN_CPU_CLONES is compiled three times — for x86-64-v4 (AVX-512), x86-64-v3
// (AVX2 + FMA) and the baseline — and the best version the machine runs is picked when the library
// loads (GCC function multiversioning). Everything it calls in its loops must be ATTNKERN_ALWAYS_INLINE,
// so that it is compiled into each version and the loops vectorise.
#pragma once

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__)
#define ATTNKERN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ATTNKERN_CPU_CLONES
#endif

#if defined(__GNUC__)
#define ATTNKERN_ALWAYS_INLINE inline __attribute__((always_inline))
#define ATTNKERN_INLINE_LAMBDA __attribute__((always_inline))
#else
#define ATTNKERN_ALWAYS_INLINE inline
#define ATTNKERN_INLINE_LAMBDA
#endif

namespace attnkern {
namespace cpu {

// body(begin, end), compiled per ISA: body is an ATTNKERN_INLINE_LAMBDA lambda, inlined into each version.
template <typename Body>
ATTNKERN_CPU_CLONES void vectorised(int64_t begin, int64_t end, const Body& body) {
  body(begin, end);
}

// at::parallel_for whose chunks run vectorised (needs <ATen/Parallel.h>).
template <typename Body>
void parallel_vectorised(int64_t begin, int64_t end, int64_t grain_size, const Body& body) {
  at::parallel_for(begin, end, grain_size, [&](int64_t chunk_begin, int64_t chunk_end) {
    vectorised(chunk_begin, chunk_end, body);
  });
}

// Vector loops run over blocks of kLanes elements (one AVX-512 register of float), held in GCC vector
// types: the compiler maps a block to one zmm, two ymm or four xmm registers per ISA version. Arrays
// they walk are padded to a multiple of kLanes.
constexpr int64_t kLanes = 16;

inline int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

template <typename T>
struct BlockOf;
template <>
struct BlockOf<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct BlockOf<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};
template <typename T>
using Block = typename BlockOf<T>::type;
typedef int32_t IntBlock __attribute__((vector_size(kLanes * sizeof(int32_t))));

template <typename T>
ATTNKERN_ALWAYS_INLINE Block<T> load(const T* p) {
  Block<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
ATTNKERN_ALWAYS_INLINE void store(T* p, const Block<T>& v) {
  std::memcpy(p, &v, sizeof v);
}

// e^x: x = n·ln2 + r with n = round(x / ln2) (the 1.5·2²³ rounding trick) and |r| ≤ ln2/2 (ln2 split in
// two for an exact n·ln2_hi), e^r by its degree-7 Taylor polynomial (relative error < 1e-7), 2^n written
// into the exponent bits. Inputs are clamped to [−87, 88]: anything below −87 gives e^−87 ≈ 1.6e−38
// rather than a smaller number or 0.
ATTNKERN_ALWAYS_INLINE Block<float> exp(Block<float> x) {
  const Block<float> zero = {};
  const Block<float> lo = zero - 87.0f, hi = zero + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const Block<float> n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
  const Block<float> r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  const Block<float> p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
  const IntBlock bits = (__builtin_convertvector(n, IntBlock) + 127) << 23;
  Block<float> two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

ATTNKERN_ALWAYS_INLINE Block<double> exp(Block<double> x) {
  for (int64_t l = 0; l < kLanes; ++l) x[l] = std::exp(x[l]);
  return x;
}

template <typename V>
ATTNKERN_ALWAYS_INLINE V maximum(const V& a, const V& b) {
  return a > b ? a : b;
}

// y[0, blocks·kLanes) += Σ_r a[r·a_stride]·x[r·x_stride + (0, blocks·kLanes)] for a few blocks at once:
// each block accumulates in registers across the r terms, and the blocks' independent FMA chains
// overlap (a row-vector times a matrix, or columns of a matrix product).
template <int blocks, typename T>
ATTNKERN_ALWAYS_INLINE void accumulate_blocks(const T* __restrict a, int64_t a_stride, const T* __restrict x,
                                              int64_t x_stride, int64_t terms, T* __restrict y) {
  Block<T> acc[blocks];
  for (int b = 0; b < blocks; ++b) acc[b] = load(y + b * kLanes);
  for (int64_t r = 0; r < terms; ++r) {
    const T coefficient = a[r * a_stride];
    for (int b = 0; b < blocks; ++b) acc[b] += coefficient * load(x + r * x_stride + b * kLanes);
  }
  for (int b = 0; b < blocks; ++b) store(y + b * kLanes, acc[b]);
}

// y[0, n) += Σ_r a[r·a_stride]·x[r·x_stride + (0, n)], n a multiple of kLanes.
template <typename T>
ATTNKERN_ALWAYS_INLINE void accumulate_rows(const T* a, int64_t a_stride, const T* x, int64_t x_stride, int64_t terms,
                                            T* y, int64_t n) {
  int64_t block = 0;
  for (; block + 4 * kLanes <= n; block += 4 * kLanes) accumulate_blocks<4>(a, a_stride, x + block, x_stride, terms, y + block);
  for (; block < n; block += kLanes) accumulate_blocks<1>(a, a_stride, x + block, x_stride, terms, y + block);
}

// out[j, i] = in[i, j] for i < rows, j < cols (in: rows × ld_in, out: cols × ld_out); out[j, i] = 0 for
// rows ≤ i < ld_out.
template <typename T>
ATTNKERN_ALWAYS_INLINE void transpose(const T* __restrict in, int64_t rows, int64_t cols, int64_t ld_in,
                                      T* __restrict out, int64_t ld_out) {
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t i = 0; i < rows; ++i) out[j * ld_out + i] = in[i * ld_in + j];
    for (int64_t i = rows; i < ld_out; ++i) out[j * ld_out + i] = T(0);
  }
}

}  // namespace cpu
}  // namespace attnkern
