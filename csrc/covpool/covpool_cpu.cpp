// CPU kernels of the covpool family.
//
// On the CPU the O(B·C²·M) products of covpool go to BLAS through at::baddbmm/at::bmm (one batched
// call each way, at the machine's GEMM peak); what the kernels add over the autograd formulation is
// the work they skip: the backward is one product (G + Gᵀ)·Xc/M straight from X instead of autograd's
// two on a saved centred copy. The Newton–Schulz square root runs over batched
// GEMMs (covpool_host.cpp), keeping only its iterates for the backward.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dtype.h"
#include "covpool/covpool.h"
#include "covpool/covpool_checks.h"

namespace attnkern {
namespace covpool {
namespace {

at::Tensor covpool_cpu(const at::Tensor& x_in) {
  check_covpool_input(x_in);
  auto x = to_compute_dtype(x_in);
  const int64_t batch = x.size(0), C = x.size(1), M = x.size(2);
  auto xc = x - x.mean(2, /*keepdim=*/true);  // centre before the product: X·Xᵀ/M − μ·μᵀ loses digits when |μ| ≫ σ
  auto out = at::empty({batch, C, C}, x.options());
  at::baddbmm_out(out, out, xc, xc.transpose(1, 2), /*beta=*/0, /*alpha=*/1.0 / static_cast<double>(M));
  return out.to(x_in.scalar_type());
}

// ∂L/∂X = S·Xc with S = (G + Gᵀ)/M (the centring's own Jacobian vanishes because Xc·1 = 0),
// computed as S·X − (S·μ)·1ᵀ: one GEMM straight from X, the correction in its beta term, no centred
// copy. Its rounding error grows with |μ|/σ only linearly (the forward's would grow quadratically:
// that one is centred first).
at::Tensor covpool_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in) {
  check_covpool_input(x_in);
  const int64_t batch = x_in.size(0), C = x_in.size(1), M = x_in.size(2);
  check_grad(grad_in, "covpool_backward: grad", {batch, C, C}, x_in, "x");
  auto grad = to_compute_dtype(grad_in);
  auto x = to_compute_dtype(x_in);
  auto sym = (grad + grad.transpose(1, 2)).div_(static_cast<double>(M));
  auto correction = at::bmm(sym, x.mean(2, /*keepdim=*/true)).neg_();  // [B, C, 1]
  return at::baddbmm(correction.expand({batch, C, M}), sym, x).to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> sqrtm_newton_schulz_cpu(const at::Tensor& a, int64_t iters, bool save_iterates) {
  return sqrtm_batched_forward(a, iters, save_iterates);
}

at::Tensor sqrtm_newton_schulz_backward_cpu(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& iterates,
                                            int64_t iters) {
  return sqrtm_batched_backward(grad, a, iterates, iters);
}

at::Tensor triuvec_cpu(const at::Tensor& a_in) {
  check_triuvec_input(a_in);
  auto a = a_in.contiguous();
  const int64_t batch = a.size(0), n = a.size(1), len = n * (n + 1) / 2;
  auto out = at::empty({batch, len}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "triuvec_cpu", [&] {
    const scalar_t* src = a.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {  // r = b·n + i: row i of matrix b, entries j ≤ i
        const int64_t b = r / n, i = r % n;
        for (int64_t j = 0; j <= i; ++j) dst[b * len + triu_index(i, j)] = src[r * n + j];
      }
    });
  });
  return out;
}

at::Tensor triuvec_backward_cpu(const at::Tensor& grad_in, int64_t n) {
  check_triuvec_grad(grad_in, n);
  const int64_t batch = grad_in.size(0), len = n * (n + 1) / 2;
  auto grad = grad_in.contiguous();
  auto grad_a = at::empty({batch, n, n}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "triuvec_backward_cpu", [&] {
    const scalar_t* src = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_a.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / n, i = r % n;
        for (int64_t j = 0; j < n; ++j) {
          dst[r * n + j] = j <= i ? src[b * len + triu_index(i, j)] : scalar_t(0);
        }
      }
    });
  });
  return grad_a;
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CPU, m) {
  m.impl("covpool", &covpool_cpu);
  m.impl("covpool_backward", &covpool_backward_cpu);
  m.impl("sqrtm_newton_schulz", &sqrtm_newton_schulz_cpu);
  m.impl("sqrtm_newton_schulz_backward", &sqrtm_newton_schulz_backward_cpu);
  m.impl("triuvec", &triuvec_cpu);
  m.impl("triuvec_backward", &triuvec_backward_cpu);
}

}  // namespace covpool
}  // namespace attnkern
