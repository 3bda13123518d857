// Host pieces of the covpool family shared by the CPU and CUDA kernels: argument checks, and the
// Newton–Schulz square root over batched GEMMs (see covpool.h for the equations).
#include "covpool/covpool.h"

#include <vector>

#include "common/checks.h"

namespace attnkern {
namespace covpool {

void check_covpool_input(const at::Tensor& x) {
  check_rank(x, "covpool: x", 3, "[B, C, M]");
  check_floating(x, "covpool: x");
  TORCH_CHECK(x.size(2) > 0, "covpool: x needs at least one position (M = H·W > 0), got shape ",
              shape_str(x));
}

void check_sqrtm_input(const at::Tensor& a, int64_t iters) {
  check_rank(a, "sqrtm_newton_schulz: a", 3, "[B, C, C]");
  check_floating(a, "sqrtm_newton_schulz: a");
  TORCH_CHECK(a.size(1) == a.size(2), "sqrtm_newton_schulz: a must hold square matrices [B, C, C], got shape ",
              shape_str(a));
  TORCH_CHECK(iters >= 1, "sqrtm_newton_schulz: iters must be >= 1, got ", iters);
}

void check_triuvec_input(const at::Tensor& a) {
  check_rank(a, "triuvec: a", 3, "[B, C, C]");
  check_floating(a, "triuvec: a");
  TORCH_CHECK(a.size(1) == a.size(2), "triuvec: a must hold square matrices [B, C, C], got shape ",
              shape_str(a));
}

void check_grad(const at::Tensor& grad, const char* grad_name, at::IntArrayRef expected,
                const at::Tensor& input, const char* input_name) {
  check_same_device(grad, grad_name, input, input_name);
  check_same_dtype(grad, grad_name, input, input_name);
  check_shape(grad, grad_name, expected);
}

at::Tensor to_compute_dtype(const at::Tensor& t) {
  auto st = t.scalar_type();
  return (st == at::kHalf || st == at::kBFloat16) ? t.to(at::kFloat) : t;
}

namespace {

// The trace-normalised start of the iteration, and every iterate the backward pass needs.
struct Iterates {
  at::Tensor trace;       // [B]; 1 where the input's trace is 0 (the output is then set to 0)
  at::Tensor zero_trace;  // [B] bool
  at::Tensor eye;         // [B, C, C]
  std::vector<at::Tensor> Y, Z, T;  // Y[k], Z[k] for k = 0..f; T[k] for k < f
};

Iterates run_iterates(const at::Tensor& a, int64_t iters, bool keep_all) {
  Iterates it;
  const int64_t batch = a.size(0), n = a.size(1);
  auto trace = a.diagonal(0, 1, 2).sum(-1);
  it.zero_trace = trace.eq(0);
  it.trace = at::where(it.zero_trace, at::ones_like(trace), trace);
  it.eye = at::eye(n, a.options()).expand({batch, n, n});
  it.Y.push_back(a / it.trace.view({-1, 1, 1}));
  it.Z.push_back(it.eye);
  for (int64_t k = 0; k + 1 < iters; ++k) {
    auto T = at::baddbmm(it.eye, it.Z.back(), it.Y.back(), kThreeHalves, -kHalf);
    auto Y = at::bmm(it.Y.back(), T);
    auto Z = at::bmm(T, it.Z.back());
    if (!keep_all) {
      it.Y.clear();
      it.Z.clear();
    } else {
      it.T.push_back(T);
    }
    it.Y.push_back(Y);
    it.Z.push_back(Z);
  }
  return it;
}

}  // namespace

at::Tensor sqrtm_batched_forward(const at::Tensor& a_in, int64_t iters) {
  check_sqrtm_input(a_in, iters);
  auto a = to_compute_dtype(a_in);
  if (a.numel() == 0) return at::empty_like(a_in);
  auto it = run_iterates(a, iters, /*keep_all=*/false);
  const auto& Y = it.Y.back();
  const auto& Z = it.Z.back();
  auto P = at::baddbmm(Y, Y, at::bmm(Z, Y), kThreeHalves, -kHalf);
  auto out = P * it.trace.sqrt().view({-1, 1, 1});
  out.masked_fill_(it.zero_trace.view({-1, 1, 1}), 0);
  return out.to(a_in.scalar_type());
}

at::Tensor sqrtm_batched_backward(const at::Tensor& grad_in, const at::Tensor& a_in, int64_t iters) {
  check_sqrtm_input(a_in, iters);
  check_grad(grad_in, "sqrtm_newton_schulz_backward: grad", a_in.sizes(), a_in, "a");
  auto a = to_compute_dtype(a_in);
  auto G = to_compute_dtype(grad_in);
  if (a.numel() == 0) return at::zeros_like(a_in);
  auto it = run_iterates(a, iters, /*keep_all=*/true);
  const int64_t f = iters - 1;
  auto sqrt_t = it.trace.sqrt().view({-1, 1, 1});
  auto t = it.trace.view({-1, 1, 1});

  // Final step P = 1.5·Y − ½·Y·(Z·Y): Z·Y = Y·Z (both are polynomials in A).
  const auto& Yf = it.Y[f];
  auto ZY = at::bmm(it.Z[f], Yf);
  auto P = at::baddbmm(Yf, Yf, ZY, kThreeHalves, -kHalf);
  auto Gp = G * sqrt_t;
  auto ZYt = ZY.transpose(1, 2);
  auto Yft = Yf.transpose(1, 2);
  auto gY = at::baddbmm(Gp * kThreeHalves, Gp, ZYt, 1, -kHalf).baddbmm_(ZYt, Gp, 1, -kHalf);
  auto gZ = at::bmm(at::bmm(Yft, Gp), Yft).mul_(-kHalf);

  // Reverse the steps Y' = Y·T, Z' = T·Z, T = 1.5·I − ½·Z·Y.
  for (int64_t k = f - 1; k >= 0; --k) {
    auto Yt = it.Y[k].transpose(1, 2);
    auto Zt = it.Z[k].transpose(1, 2);
    auto Tt = it.T[k].transpose(1, 2);
    auto gT = at::bmm(Yt, gY).baddbmm_(gZ, Zt);
    auto gY_prev = at::bmm(gY, Tt).baddbmm_(Zt, gT, 1, -kHalf);
    gZ = at::bmm(Tt, gZ).baddbmm_(gT, Yt, 1, -kHalf);
    gY = gY_prev;
  }

  // gY is now ∂L/∂A (Z₀ = I does not depend on A).
  const auto& A = it.Y[0];
  auto gA_dot_A = (gY * A).sum({1, 2});
  auto G_dot_P = (G * P).sum({1, 2});
  auto coef = trace_grad_coefficient(gA_dot_A, G_dot_P, it.trace);
  auto grad = gY / t + it.eye * coef.view({-1, 1, 1});
  grad.masked_fill_(it.zero_trace.view({-1, 1, 1}), 0);
  return grad.to(a_in.scalar_type());
}

}  // namespace covpool
}  // namespace attnkern
