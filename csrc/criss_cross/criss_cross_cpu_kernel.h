// The criss-cross CPU kernels' softmax numerators, compiled once per CPU capability
// (cpu_foreach_capability.h: no includes here, everything lives in namespace ATTNKERN_CPU_NAMESPACE);
// criss_cross_cpu.cpp calls them on each energy tile its BLAS products fill.

namespace attnkern {
namespace criss_cross {
namespace ATTNKERN_CPU_NAMESPACE {

namespace vec = ::attnkern::ATTNKERN_CPU_NAMESPACE::vec;

// Softmax numerators of the rows of an n×n tile, in place: e[i, j] ← exp(e[i, j] − max_i), each row's max and
// sum written `stride` apart. With skip_diagonal, e[i, i] is left out (set to 0): the pixel itself belongs to its
// row block, not its column block. An energy of −inf (q·k against an infinite k) has weight 0 also when the row's
// max is −inf (exp(−inf − (−inf)) would be NaN); a NaN energy makes the row's sum NaN, so every weight of its
// pixel. A row with nothing left gets max −inf and sum 0. A vector of lanes at a time (vec::exp), the last
// n mod lanes entries one by one.
template <typename scalar_t>
void exponentiate_rows(scalar_t* e, int64_t n, bool skip_diagonal, scalar_t* max_out, int64_t stride,
                       scalar_t* sum_out) {
  using Vec = vec::Vec<scalar_t>;
  constexpr int64_t lanes = vec::kLanes<scalar_t>;
  const scalar_t minus_inf = -std::numeric_limits<scalar_t>::infinity();
  const int64_t whole = n / lanes * lanes;
  for (int64_t i = 0; i < n; ++i) {
    scalar_t* row = e + i * n;
    if (skip_diagonal) row[i] = minus_inf;  // weight 0, and out of the max
    Vec max_v = vec::broadcast(minus_inf);
    for (int64_t j = 0; j < whole; j += lanes) max_v = vec::maximum(max_v, vec::load(row + j));
    scalar_t max = vec::reduce_max<scalar_t>(max_v);
    for (int64_t j = whole; j < n; ++j) max = row[j] > max ? row[j] : max;

    const Vec max_b = vec::broadcast(max), minus_inf_b = vec::broadcast(minus_inf);
    Vec sum_v = vec::broadcast(scalar_t(0));
    for (int64_t j = 0; j < whole; j += lanes) {
      const Vec x = vec::load(row + j);
      const Vec weight = x == minus_inf_b ? Vec{} : vec::exp(x - max_b);
      vec::store(row + j, weight);
      sum_v += weight;
    }
    scalar_t sum = vec::reduce_sum<scalar_t>(sum_v);
    for (int64_t j = whole; j < n; ++j) {
      row[j] = row[j] == minus_inf ? scalar_t(0) : std::exp(row[j] - max);
      sum += row[j];
    }
    max_out[i * stride] = max;
    sum_out[i * stride] = sum;
  }
}

}  // namespace ATTNKERN_CPU_NAMESPACE
}  // namespace criss_cross
}  // namespace attnkern
