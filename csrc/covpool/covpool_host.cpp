// Host pieces of the covpool family shared by the CPU and CUDA kernels: argument checks, and the
// Newton–Schulz square root over batched GEMMs (see covpool.h for the equations).
#include "covpool/covpool.h"
#include "covpool/covpool_checks.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dtype.h"

namespace attnkern {
namespace covpool {

namespace {

void check_square_batch(const at::Tensor& a, const char* name) {
  check_rank(a, name, 3, "[B, C, C]");
  check_floating(a, name);
  TORCH_CHECK_VALUE(a.size(1) == a.size(2), name, ": expected a batch of square matrices [B, C, C], got shape ",
                    shape_str(a));
}

}  // namespace

int64_t triuvec_length(int64_t n, const char* name) {
  return checked_mul(n, checked_add(n, 1, name), name) / 2;
}

void check_covpool_input(const at::Tensor& x) {
  check_rank(x, "covpool: x", 3, "[B, C, M]");
  check_floating(x, "covpool: x");
  TORCH_CHECK_VALUE(x.size(2) > 0, "covpool: x needs at least one position (M = H·W > 0), got shape ",
                    shape_str(x));
  checked_mul(x.size(1), x.size(1), "covpool: the output size C·C of x");
}

void check_sqrtm_input(const at::Tensor& a, int64_t iters) {
  check_square_batch(a, "sqrtm_newton_schulz: a");
  check_in_range(iters, "sqrtm_newton_schulz: iters", 1, kMaxIters);
}

void check_triuvec_input(const at::Tensor& a) {
  check_square_batch(a, "triuvec: a");
  triuvec_length(a.size(1), "triuvec: the output length C(C+1)/2 of a");
}

void check_triuvec_grad(const at::Tensor& grad, int64_t n) {
  TORCH_CHECK_VALUE(n >= 0, "triuvec_backward: n must be >= 0, got ", n);
  const int64_t length = triuvec_length(n, "triuvec_backward: the length n(n+1)/2 of grad");
  check_rank(grad, "triuvec_backward: grad", 2, "[B, n(n+1)/2]");
  check_floating(grad, "triuvec_backward: grad");
  check_shape(grad, "triuvec_backward: grad", {grad.size(0), length});
}

void check_grad(const at::Tensor& grad, const char* grad_name, at::IntArrayRef expected,
                const at::Tensor& input, const char* input_name) {
  check_same_device(grad, grad_name, input, input_name);
  check_same_dtype(grad, grad_name, input, input_name);
  check_shape(grad, grad_name, expected);
}

at::Tensor iterates_empty(const at::Tensor& a) {
  return at::empty({0}, a.options().dtype(at::toOpMathType(a.scalar_type())));
}

at::Tensor iterates_alloc(const at::Tensor& a, int64_t iters) {
  return at::empty({saved_iterate_count(iters), a.size(0), a.size(1), a.size(2)},
                   a.options().dtype(at::toOpMathType(a.scalar_type())));
}

void check_saved_iterates(const at::Tensor& saved, const at::Tensor& a, int64_t iters) {
  const char* name = "sqrtm_newton_schulz_backward: iterates";
  check_shape(saved, name, {saved_iterate_count(iters), a.size(0), a.size(1), a.size(2)});
  check_same_device(saved, name, a, "a");
  TORCH_CHECK_TYPE(saved.scalar_type() == at::toOpMathType(a.scalar_type()), name, ": expected ",
                   at::toOpMathType(a.scalar_type()), " (a's accumulation type), got ", saved.scalar_type());
}

namespace {

at::Tensor saved_iterate(const at::Tensor& iterates, int64_t step, SavedIterate which) {
  return iterates.select(0, saved_slot(step, which));
}

// covpool.h's matrix-product policy over batches [B, n, n]: each product is one at::bmm_out or
// at::baddbmm_out into a matrix allocated beforehand (nothing is allocated per product).
struct BatchedProducts {
  using Scalar = double;
  using Matrix = at::Tensor;
  using Operand = at::Tensor;

  at::Tensor eye;  // [B, n, n], an expanded view (only the forward step reads it)

  at::Tensor transposed(const at::Tensor& x) const { return x.transpose(1, 2); }
  const at::Tensor& identity() const { return eye; }

  void product(at::Tensor out, const at::Tensor& a, const at::Tensor& b, double alpha,
               const at::Tensor& c = at::Tensor(), double beta = 0) const {
    if (!c.defined()) {
      at::bmm_out(out, a, b);
      if (alpha != 1) out.mul_(alpha);
    } else if (c.is_same(out)) {
      out.baddbmm_(a, b, beta, alpha);
    } else {
      at::baddbmm_out(out, c, a, b, beta, alpha);
    }
  }
};

// Each matrix's trace t, with 1 in place of 0 (whose result is then set to 0), and where it was 0.
struct Trace {
  at::Tensor value;  // [B]
  at::Tensor zero;   // [B] bool
};

Trace safe_trace(const at::Tensor& a) {
  auto trace = a.diagonal(0, 1, 2).sum(-1);
  auto zero = trace.eq(0);
  return {at::where(zero, at::ones_like(trace), trace), zero};
}

// ⟨x, y⟩ of each pair of matrices of the batches, with `work` (a matrix of the batch) for the products.
at::Tensor batched_dot(const at::Tensor& x, const at::Tensor& y, at::Tensor work) {
  return at::mul_out(work, x, y).sum({1, 2});
}

// The trace-normalised iteration up to Y_f, Z_f: into the slots of `iterates` when it is defined (from
// Y₀ = A, Z₀ = I, which are not saved), else in four matrices that take turns, one of which (`free`) is
// work space afterwards.
struct Iteration {
  Trace trace;
  BatchedProducts products;
  at::Tensor Yf, Zf;
  at::Tensor free;  // undefined when every matrix is a saved iterate
};

Iteration run_iteration(const at::Tensor& a, int64_t iters, const at::Tensor& iterates) {
  const int64_t batch = a.size(0), n = a.size(1);
  Iteration it{safe_trace(a), {at::eye(n, a.options()).expand({batch, n, n})}, {}, {}, {}};
  const BatchedProducts& m = it.products;
  const auto trace = it.trace.value.view({-1, 1, 1});
  if (iterates.defined()) {
    at::Tensor Y = a / trace, Z = m.eye;
    for (int64_t k = 0; k + 1 < iters; ++k) {
      newton_schulz_step(m, Y, Z, saved_iterate(iterates, k, kSavedT), saved_iterate(iterates, k, kSavedY),
                         saved_iterate(iterates, k, kSavedZ));
      Y = saved_iterate(iterates, k, kSavedY);
      Z = saved_iterate(iterates, k, kSavedZ);
    }
    it.Yf = Y;
    it.Zf = Z;
  } else {
    at::Tensor Y = a / trace, Z = at::empty_like(a).copy_(m.eye), T = at::empty_like(a), W = at::empty_like(a);
    for (int64_t k = 0; k + 1 < iters; ++k) newton_schulz_step_in_place(m, Y, Z, T, W);
    it.Yf = Y;
    it.Zf = Z;
    it.free = T;
  }
  return it;
}

}  // namespace

// Memory: beside a, the forward holds the four matrices of the iteration and the result (training:
// the saved iterates, Z·Y and the result); the backward the saved iterates, A and four matrices, the
// one that ends up holding the gradient returned. Each work matrix is its own allocation: the
// returned one frees the others, and glibc serves blocks up to 32 MiB from its reused heap but maps
// (and faults in) larger ones afresh at every call.
std::tuple<at::Tensor, at::Tensor> sqrtm_batched_forward(const at::Tensor& a_in, int64_t iters, bool save_iterates) {
  check_sqrtm_input(a_in, iters);
  auto a = to_compute_dtype(a_in);
  auto iterates = save_iterates ? iterates_alloc(a_in, iters) : iterates_empty(a_in);
  if (a.numel() == 0) return {at::empty_like(a_in), iterates};
  auto it = run_iteration(a, iters, save_iterates ? iterates : at::Tensor());
  auto ZY = it.free.defined() ? it.free : at::empty_like(a);
  auto out = at::empty_like(a);
  newton_schulz_final(it.products, it.Yf, it.Zf, ZY, out);
  out.mul_(it.trace.value.sqrt().view({-1, 1, 1}));
  out.masked_fill_(it.trace.zero.view({-1, 1, 1}), 0);
  return {out.to(a_in.scalar_type()), iterates};
}

at::Tensor sqrtm_batched_backward(const at::Tensor& grad_in, const at::Tensor& a_in, const at::Tensor& saved,
                                  int64_t iters) {
  check_sqrtm_input(a_in, iters);
  check_grad(grad_in, "sqrtm_newton_schulz_backward: grad", a_in.sizes(), a_in, "a");
  auto a = to_compute_dtype(a_in);
  auto G = to_compute_dtype(grad_in);
  if (a.numel() == 0) return at::zeros_like(a_in);
  const bool recompute = saved.numel() == 0;
  if (!recompute) check_saved_iterates(saved, a_in, iters);
  auto iterates = recompute ? iterates_alloc(a_in, iters) : saved;
  const auto [trace, zero_trace] = recompute ? run_iteration(a, iters, iterates).trace : safe_trace(a);
  const int64_t f = iters - 1, batch = a.size(0), n = a.size(1);
  const BatchedProducts m{};

  // Step k's Yₖ and Zₖ: saved by step k − 1, or Y₀ = A and Z₀ = I.
  const auto A = a / trace.view({-1, 1, 1});
  const auto I = at::eye(n, a.options()).expand({batch, n, n});
  auto Y = [&](int64_t k) { return k == 0 ? A : saved_iterate(iterates, k - 1, kSavedY); };
  auto Z = [&](int64_t k) { return k == 0 ? I : saved_iterate(iterates, k - 1, kSavedZ); };

  // Four matrices, each its own allocation: the gradient is returned in one of them.
  at::Tensor ZY = at::empty_like(a), P = at::empty_like(a), gY = at::empty_like(a), gZ = at::empty_like(a);

  // The final step P = 1.5·Y − ½·Y·(Z·Y) and its gradient, from Gp = ∂L/∂P = G·√t (in P's matrix).
  const auto Yf = Y(f);
  newton_schulz_final(m, Yf, Z(f), ZY, P);
  auto G_dot_P = batched_dot(G, P, /*work=*/gY);
  auto Gp = at::mul_out(P, G, trace.sqrt().view({-1, 1, 1}));
  newton_schulz_final_backward(m, Gp, Yf, ZY, gY, gZ, /*work=*/ZY);

  // Reverse the steps (Z₀ = I needs no gradient).
  at::Tensor gT = ZY, spare = P;
  for (int64_t k = f - 1; k >= 0; --k) {
    newton_schulz_step_backward_in_place(m, Y(k), Z(k), saved_iterate(iterates, k, kSavedT), gY, gZ, gT, spare,
                                         /*z_grad=*/k > 0);
  }

  // gY is now ∂L/∂A; ∂L/∂a is formed over it.
  auto gA_dot_A = batched_dot(gY, A, /*work=*/spare);
  auto coef = trace_grad_coefficient(gA_dot_A, G_dot_P, trace);
  auto grad = gY.div_(trace.view({-1, 1, 1}));
  grad.diagonal(0, 1, 2).add_(coef.view({-1, 1}));
  grad.masked_fill_(zero_trace.view({-1, 1, 1}), 0);
  return grad.to(a_in.scalar_type());
}

TORCH_LIBRARY_IMPL(attnkern, CompositeImplicitAutograd, m) {
  m.impl("covpool_check", &check_covpool_input);
  m.impl("sqrtm_newton_schulz_check", &check_sqrtm_input);
  m.impl("triuvec_check", &check_triuvec_input);
}

}  // namespace covpool
}  // namespace attnkern
