// CPU kernels of the covpool family.
//
// covpool works one sample at a time: the sample is centred into a buffer that stays in cache and
// the product goes to BLAS, so X is read from memory once and no centred copy of the batch (nor any
// M×M matrix) is ever made. Samples run in parallel when there are enough of them; otherwise each
// sample's centring and product use all threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "covpool/covpool.h"

namespace attnkern {
namespace covpool {
namespace {

// xc[r, :] = x[r, :] − mean(x[r, :]) for `rows` contiguous rows of length M.
template <typename scalar_t>
void centre_rows(const scalar_t* x, scalar_t* xc, int64_t rows, int64_t M) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* src = x + r * M;
      scalar_t* dst = xc + r * M;
      double sum = 0;
      for (int64_t m = 0; m < M; ++m) sum += src[m];
      const scalar_t mean = static_cast<scalar_t>(sum / static_cast<double>(M));
      for (int64_t m = 0; m < M; ++m) dst[m] = src[m] - mean;
    }
  });
}

// Calls body(b, xc) for every sample b, xc being a [C, M] buffer holding x[b] centred.
template <typename scalar_t, typename Body>
void for_each_centred_sample(const at::Tensor& x, Body body) {
  const int64_t batch = x.size(0), C = x.size(1), M = x.size(2);
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  auto run = [&](int64_t b0, int64_t b1) {
    auto xc = at::empty({C, M}, x.options());
    for (int64_t b = b0; b < b1; ++b) {
      centre_rows(x_ptr + b * C * M, xc.mutable_data_ptr<scalar_t>(), C, M);
      body(b, xc);
    }
  };
  if (batch >= at::get_num_threads()) {
    at::parallel_for(0, batch, 1, run);  // BLAS runs single-threaded inside
  } else {
    run(0, batch);
  }
}

at::Tensor covpool_cpu(const at::Tensor& x_in) {
  check_covpool_input(x_in);
  auto x = to_compute_dtype(x_in).contiguous();
  const int64_t batch = x.size(0), C = x.size(1), M = x.size(2);
  auto out = at::empty({batch, C, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "covpool_cpu", [&] {
    for_each_centred_sample<scalar_t>(x, [&](int64_t b, const at::Tensor& xc) {
      auto out_b = out.select(0, b);
      at::addmm_out(out_b, out_b, xc, xc.t(), /*beta=*/0, /*alpha=*/1.0 / static_cast<double>(M));
    });
  });
  return out.to(x_in.scalar_type());
}

// ∂L/∂X = (G + Gᵀ)·Xc / M (the centring's own Jacobian vanishes because Xc·1 = 0).
at::Tensor covpool_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in) {
  check_covpool_input(x_in);
  const int64_t C = x_in.size(1), M = x_in.size(2);
  check_grad(grad_in, "covpool_backward: grad", {x_in.size(0), C, C}, x_in, "x");
  auto x = to_compute_dtype(x_in).contiguous();
  auto grad = to_compute_dtype(grad_in);
  auto sym = (grad + grad.transpose(1, 2)).div_(static_cast<double>(M));
  auto grad_x = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "covpool_backward_cpu", [&] {
    for_each_centred_sample<scalar_t>(x, [&](int64_t b, const at::Tensor& xc) {
      auto grad_b = grad_x.select(0, b);
      at::mm_out(grad_b, sym.select(0, b), xc);
    });
  });
  return grad_x.to(x_in.scalar_type());
}

at::Tensor sqrtm_newton_schulz_cpu(const at::Tensor& a, int64_t iters) {
  return sqrtm_batched_forward(a, iters);
}

at::Tensor sqrtm_newton_schulz_backward_cpu(const at::Tensor& grad, const at::Tensor& a, int64_t iters) {
  return sqrtm_batched_backward(grad, a, iters);
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
  check_rank(grad_in, "triuvec_backward: grad", 2, "[B, C(C+1)/2]");
  const int64_t batch = grad_in.size(0), len = n * (n + 1) / 2;
  check_shape(grad_in, "triuvec_backward: grad", {batch, len});
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
