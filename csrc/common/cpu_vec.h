// Vector helpers of one CPU capability, for kernel bodies compiled by cpu_foreach_capability.h, which
// includes this file once per capability with ATTNKERN_CPU_NAMESPACE, ATTNKERN_CPU_VECTOR_BYTES and
// ATTNKERN_CPU_VECTOR_REGISTERS set (no include guard; it includes nothing).
//
// Vectors are GCC/Clang vector types exactly one register wide — 16 floats for AVX-512, 8 for AVX2,
// 4 for SSE2/NEON — so that every operation maps to one instruction of the target, never to pieces of
// a wider type. Arrays the loops walk are padded to whole vectors (padded()).

namespace attnkern {
namespace ATTNKERN_CPU_NAMESPACE {
namespace vec {

template <typename T, int Bytes = ATTNKERN_CPU_VECTOR_BYTES>
struct VecOf {
  typedef T type __attribute__((vector_size(Bytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
typedef int32_t IntVec __attribute__((vector_size(ATTNKERN_CPU_VECTOR_BYTES)));

template <typename T>
constexpr int64_t kLanes = ATTNKERN_CPU_VECTOR_BYTES / sizeof(T);

// n rounded up to whole vectors.
template <typename T>
constexpr int64_t padded(int64_t n) {
  return (n + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}

template <typename T>
ATTNKERN_ALWAYS_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
ATTNKERN_ALWAYS_INLINE void store(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof v);
}

// Every lane x: one broadcast instruction (x − 0 is x for every x, −0 included, so the compiler drops
// the subtraction; x + 0 is not, and would cost an addition first).
template <typename T>
ATTNKERN_ALWAYS_INLINE Vec<T> broadcast(T x) {
  return x - Vec<T>{};
}

template <typename V>
ATTNKERN_ALWAYS_INLINE V maximum(const V& a, const V& b) {
  return a > b ? a : b;
}

// op over the lanes of v, as a tree: the upper half of the vector combined with the lower half
// until two lanes are left (log2(lanes) vector operations, not a chain of lanes − 1 scalar ones).
template <typename T, int Bytes, typename Op>
ATTNKERN_ALWAYS_INLINE T reduce(const typename VecOf<T, Bytes>::type& v, Op op) {
  if constexpr (Bytes == 2 * sizeof(T)) {
    return op(v[0], v[1]);
  } else {
    typename VecOf<T, Bytes / 2>::type low, high;
    std::memcpy(&low, &v, Bytes / 2);
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + Bytes / 2, Bytes / 2);
    return reduce<T, Bytes / 2>(op(low, high), op);
  }
}

template <typename T>
ATTNKERN_ALWAYS_INLINE T reduce_max(const Vec<T>& v) {
  return reduce<T, ATTNKERN_CPU_VECTOR_BYTES>(v, [](const auto& a, const auto& b) { return a > b ? a : b; });
}

template <typename T>
ATTNKERN_ALWAYS_INLINE T reduce_sum(const Vec<T>& v) {
  return reduce<T, ATTNKERN_CPU_VECTOR_BYTES>(v, [](const auto& a, const auto& b) { return a + b; });
}

// e^x: x = n·ln2 + r with n = round(x / ln2) (the 1.5·2²³ rounding trick) and |r| ≤ ln2/2 (ln2 split in
// two for an exact n·ln2_hi), e^r by its degree-7 Taylor polynomial (relative error < 1e-7), 2^n written
// into the exponent bits. Below −87.3 (e^x under the smallest normal float) the result is 0, so
// e^−inf = 0; NaN stays NaN.
ATTNKERN_ALWAYS_INLINE Vec<float> exp(const Vec<float>& x) {
  const Vec<float> lo = broadcast(-87.3f), hi = broadcast(88.0f);
  Vec<float> y = x < lo ? lo : x;
  y = y > hi ? hi : y;
  const Vec<float> n = (y * 1.44269504f + 12582912.0f) - 12582912.0f;
  const Vec<float> r = (y - n * 0.693145752f) - n * 1.42860677e-6f;
  const Vec<float> p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
  const IntVec bits = (__builtin_convertvector(n, IntVec) + 127) << 23;
  Vec<float> two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return x < lo ? Vec<float>{} : p * two_n;
}

// Double precision (the accuracy tests ask of float64) from the C library, lane by lane.
ATTNKERN_ALWAYS_INLINE Vec<double> exp(Vec<double> x) {
  for (int64_t l = 0; l < kLanes<double>; ++l) x[l] = std::exp(x[l]);
  return x;
}

// ---- small matrix products -------------------------------------------------------------------
//
// C[r, :] (+)= Σ_k A[r, k]·B[k, :] for r < rows, over `vectors` whole vectors of C's and B's rows, with
// A[r, k] = a[r·a_row + k·a_k] — so A may be read transposed (a_row = 1) — B's rows ldb apart and C's
// ldc apart. C is computed in register tiles of kTileRows rows × kTileVectors vectors: per k, a tile
// loads kTileVectors vectors of B and broadcasts kTileRows elements of A into kTileRows·kTileVectors
// FMAs, sized so that accumulators, B's vectors and a broadcast fit the register file.

constexpr int kTileVectors = ATTNKERN_CPU_VECTOR_REGISTERS >= 32 ? 4 : 2;
constexpr int kTileRows = (ATTNKERN_CPU_VECTOR_REGISTERS - kTileVectors - 2) / kTileVectors;

template <int Rows, int Vectors, typename T>
ATTNKERN_ALWAYS_INLINE void product_tile(const T* __restrict a, int64_t a_row, int64_t a_k, const T* __restrict b,
                                         int64_t ldb, int64_t K, T* __restrict c, int64_t ldc, bool accumulate) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[Rows][Vectors];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) acc[r][v] = accumulate ? load(c + r * ldc + v * L) : Vec<T>{};
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec<T> row[Vectors];
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) row[v] = load(b + k * ldb + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) {
      const Vec<T> coefficient = broadcast(a[r * a_row + k * a_k]);
#pragma GCC unroll 4
      for (int v = 0; v < Vectors; ++v) acc[r][v] += coefficient * row[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < Vectors; ++v) store(c + r * ldc + v * L, acc[r][v]);
  }
}

// The tile of `rows` (≤ kTileRows) rows and Vectors vectors: full tiles and the last rows of C.
template <int Vectors, typename T>
ATTNKERN_ALWAYS_INLINE void product_rows(int64_t rows, const T* a, int64_t a_row, int64_t a_k, const T* b, int64_t ldb,
                                         int64_t K, T* c, int64_t ldc, bool accumulate) {
  static_assert(kTileRows == 6, "product_rows handles tiles of up to 6 rows");
  switch (rows) {
    case 6: return product_tile<6, Vectors>(a, a_row, a_k, b, ldb, K, c, ldc, accumulate);
    case 5: return product_tile<5, Vectors>(a, a_row, a_k, b, ldb, K, c, ldc, accumulate);
    case 4: return product_tile<4, Vectors>(a, a_row, a_k, b, ldb, K, c, ldc, accumulate);
    case 3: return product_tile<3, Vectors>(a, a_row, a_k, b, ldb, K, c, ldc, accumulate);
    case 2: return product_tile<2, Vectors>(a, a_row, a_k, b, ldb, K, c, ldc, accumulate);
    default: return product_tile<1, Vectors>(a, a_row, a_k, b, ldb, K, c, ldc, accumulate);
  }
}

template <typename T>
void product(const T* a, int64_t a_row, int64_t a_k, const T* b, int64_t ldb, int64_t K, T* c, int64_t ldc,
             int64_t rows, int64_t vectors, bool accumulate) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t v0 = 0; v0 < vectors; v0 += kTileVectors) {
    const int64_t tile_vectors = vectors - v0 < kTileVectors ? vectors - v0 : kTileVectors;
    for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int64_t tile_rows = rows - r0 < kTileRows ? rows - r0 : kTileRows;
      const T* a_tile = a + r0 * a_row;
      T* c_tile = c + r0 * ldc + v0 * L;
      const T* b_tile = b + v0 * L;
      switch (tile_vectors) {
        case 4:
          product_rows<(kTileVectors >= 4 ? 4 : 1)>(tile_rows, a_tile, a_row, a_k, b_tile, ldb, K, c_tile, ldc, accumulate);
          break;
        case 3:
          product_rows<(kTileVectors >= 3 ? 3 : 1)>(tile_rows, a_tile, a_row, a_k, b_tile, ldb, K, c_tile, ldc, accumulate);
          break;
        case 2:
          product_rows<2>(tile_rows, a_tile, a_row, a_k, b_tile, ldb, K, c_tile, ldc, accumulate);
          break;
        default:
          product_rows<1>(tile_rows, a_tile, a_row, a_k, b_tile, ldb, K, c_tile, ldc, accumulate);
      }
    }
  }
}

}  // namespace vec
}  // namespace ATTNKERN_CPU_NAMESPACE
}  // namespace attnkern
