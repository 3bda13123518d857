// CPU kernels of the criss-cross family: every element through the shared entry functions of
// criss_cross.h, in parallel over rows of the output.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "criss_cross/criss_cross.h"

namespace attnkern {
namespace criss_cross {
namespace {

at::Tensor affinity_cpu(const at::Tensor& q_in, const at::Tensor& k_in) {
  check_affinity_inputs(q_in, k_in);
  auto q = q_in.contiguous(), k = k_in.contiguous();
  const int64_t B = q.size(0), C = q.size(1), H = q.size(2), W = q.size(3), P = H + W - 1;
  auto energy = at::empty({B, P, H, W}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "criss_cross_affinity_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* q_ptr = q.const_data_ptr<scalar_t>();
    const scalar_t* k_ptr = k.const_data_ptr<scalar_t>();
    scalar_t* e_ptr = energy.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * P * H, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {  // r = (b·P + p)·H + h
        const int64_t h = r % H, p = (r / H) % P, b = r / (H * P);
        for (int64_t w = 0; w < W; ++w) {
          e_ptr[r * W + w] = static_cast<scalar_t>(
              affinity_entry<acc_t>(q_ptr + b * C * H * W, k_ptr + b * C * H * W, C, H, W, p, h, w));
        }
      }
    });
  });
  return energy;
}

// aggregate (transposed = false) and aggregate_transposed share everything but the entry function.
template <bool transposed>
at::Tensor aggregate_cpu(const at::Tensor& attn_in, const at::Tensor& x_in) {
  check_aggregate_inputs(attn_in, x_in, transposed ? "criss_cross_aggregate_transposed" : "criss_cross_aggregate",
                         transposed ? "x" : "v");
  auto attn = attn_in.contiguous(), x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = H + W - 1;
  auto out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "criss_cross_aggregate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a_ptr = attn.const_data_ptr<scalar_t>();
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C * H, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {  // r = (b·C + c)·H + h
        const int64_t h = r % H, b = r / (H * C);
        const scalar_t* a_b = a_ptr + b * P * H * W;
        const scalar_t* plane = x_ptr + (r / H) * H * W;
        for (int64_t w = 0; w < W; ++w) {
          const acc_t value = transposed ? aggregate_transposed_entry<acc_t>(a_b, plane, H, W, h, w)
                                         : aggregate_entry<acc_t>(a_b, plane, H, W, h, w);
          out_ptr[r * W + w] = static_cast<scalar_t>(value);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CPU, m) {
  m.impl("criss_cross_affinity", &affinity_cpu);
  m.impl("criss_cross_aggregate", &aggregate_cpu<false>);
  m.impl("criss_cross_aggregate_transposed", &aggregate_cpu<true>);
}

}  // namespace criss_cross
}  // namespace attnkern
