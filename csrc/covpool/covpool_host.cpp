// Host pieces of the covpool family shared by the CPU and CUDA kernels: argument checks, and the
// Newton–Schulz square root over batched GEMMs (see covpool.h for the equations).
#include "covpool/covpool.h"
#include "covpool/covpool_checks.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/ScalarOps.h>
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

  at::Tensor eye;  // [B, n, n], an expanded view (only the forward's steps and iters = 1 read it)

  at::Tensor transposed(const at::Tensor& x) const { return x.transpose(1, 2); }
  const at::Tensor& identity() const { return eye; }

  // β = 0 in a GEMM does not read out (no NaN from uninitialised memory): α is applied in the product, and
  // β·I added on the diagonal, rather than the identity copied into out first.
  void product(at::Tensor out, const at::Tensor& a, const at::Tensor& b, double alpha,
               const at::Tensor& c = at::Tensor(), double beta = 0) const {
    if (!c.defined() || c.is_same(eye)) {
      out.baddbmm_(a, b, /*beta=*/0, alpha);
      if (c.defined()) out.diagonal(0, 1, 2).add_(beta);
    } else if (c.is_same(out)) {
      out.baddbmm_(a, b, beta, alpha);
    } else {
      at::baddbmm_out(out, c, a, b, beta, alpha);
    }
  }

  // α as a wrapped 0-dim tensor: mul's Scalar out= variant computes into a new tensor and copies it over.
  void identity_plus(at::Tensor out, const at::Tensor& a, double alpha, double beta) const {
    at::mul_out(out, a, at::native::wrapped_scalar_tensor(alpha));
    out.diagonal(0, 1, 2).add_(beta);
  }

  void accumulate(at::Tensor out, const at::Tensor& a, double alpha) const { out.add_(a, alpha); }
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
// work space afterwards (with iters = 1 there are no steps: Y_f = A, Z_f = I).
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
  at::Tensor A = a / it.trace.value.view({-1, 1, 1});
  if (iters == 1) {
    it.Yf = A;
    it.Zf = m.eye;
  } else if (iterates.defined()) {
    auto slot = [&](int64_t k, SavedIterate which) { return saved_iterate(iterates, k, which); };
    newton_schulz_first_step(m, A, slot(0, kSavedT), slot(0, kSavedY));  // Z₁ = T₀: one slot
    for (int64_t k = 1; k + 1 < iters; ++k) {
      newton_schulz_step(m, slot(k - 1, kSavedY), slot(k - 1, kSavedZ), slot(k, kSavedT), slot(k, kSavedY),
                         slot(k, kSavedZ));
    }
    it.Yf = slot(iters - 2, kSavedY);
    it.Zf = slot(iters - 2, kSavedZ);
  } else {
    at::Tensor Y = A, Z = at::empty_like(a), T = at::empty_like(a), W = at::empty_like(a);
    newton_schulz_first_step_in_place(m, Y, Z, T, W);
    for (int64_t k = 1; k + 1 < iters; ++k) newton_schulz_step_in_place(m, Y, Z, T, W);
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
  at::Tensor ZY = at::empty_like(a), Gp = at::empty_like(a), gY = at::empty_like(a), gZ = at::empty_like(a);

  // The final step P = 1.5·Y − ½·Y·(Z·Y)'s gradient, from Gp = ∂L/∂P = G·√t; ⟨G, P⟩ = ⟨Gp, P⟩/√t, where
  // ⟨Gp, P⟩ is ⟨gY, Y⟩ between the gradient's two parts (covpool.h).
  const auto Yf = Y(f);
  const auto sqrt_trace = trace.sqrt();
  newton_schulz_final_zy(m, Yf, Z(f), ZY);
  at::mul_out(Gp, G, sqrt_trace.view({-1, 1, 1}));
  newton_schulz_final_backward_first(m, Gp, ZY, gY);
  auto G_dot_P = batched_dot(gY, Yf, /*work=*/gZ) / sqrt_trace;
  newton_schulz_final_backward_rest(m, Gp, Yf, ZY, gY, gZ, /*work=*/ZY);

  // Reverse the steps: the general ones, then step 0 (Z₀ = I, which needs no gradient).
  at::Tensor gT = ZY, spare = Gp;
  for (int64_t k = f - 1; k > 0; --k) {
    newton_schulz_step_backward_in_place(m, Y(k), Z(k), saved_iterate(iterates, k, kSavedT), gY, gZ, gT, spare);
  }
  if (f > 0) newton_schulz_first_step_backward_in_place(m, A, saved_iterate(iterates, 0, kSavedT), gY, gZ, gT, spare);

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
