// CPU kernels of the criss-cross family: affinity and aggregation element by element through the
// shared entry functions of criss_cross.h, in parallel over rows of the output; the fused attention
// over BLAS tiles (below).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/cpu_parallel.h"
#include "common/dtype.h"
#include "criss_cross/criss_cross.h"
#include "criss_cross/criss_cross_checks.h"

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

// ---- fused attention ----------------------------------------------------------------------
// Each pixel's softmax runs over two blocks of positions, its column and its row. The CPU kernels
// take them apart — one image column, then one image row, per task — with BLAS products on an H×H
// (W×W) energy tile, and merge the blocks through their maxima and sums: the [B, H+W−1, H, W]
// energies never exist, nor does any other full-size temporary. Columns are taken kColumnBlock at a
// time into contiguous [columns, C, H] copies (whole cache lines read, and they stay in cache).

constexpr int64_t kColumnBlock = 16;  // a 64-byte line of float

// Row h of sample b of x [B, C, H, W]: a [C, W] view.
at::Tensor row_of(const at::Tensor& x, int64_t b, int64_t h) { return x[b].select(1, h); }

// Columns w0 .. w0 + n − 1 of sample b of x [B, C, H, W]: an [n, C, H] view (copy it to compute).
at::Tensor columns_of(const at::Tensor& x, int64_t b, int64_t w0, int64_t n) {
  return x[b].narrow(2, w0, n).permute({2, 0, 1});
}

// Runs body(task, tile, scratch) for tasks 0 .. count − 1, in parallel, with two n×n tiles.
template <typename Body>
void for_each_task(int64_t count, int64_t n, const at::TensorOptions& options, Body body) {
  parallel_for_aten(0, count, 1, [&](int64_t t0, int64_t t1) {
    auto tile = at::empty({n, n}, options);
    auto scratch = at::empty({n, n}, options);
    for (int64_t t = t0; t < t1; ++t) body(t, tile, scratch);
  });
}

// Runs body(b, w0, n, tile, scratch) for every block of up to kColumnBlock columns.
template <typename Body>
void for_each_column_block(int64_t batch, int64_t H, int64_t W, const at::TensorOptions& options, Body body) {
  const int64_t blocks = (W + kColumnBlock - 1) / kColumnBlock;
  for_each_task(batch * blocks, H, options, [&](int64_t t, at::Tensor& tile, at::Tensor& scratch) {
    const int64_t w0 = (t % blocks) * kColumnBlock;
    body(t / blocks, w0, std::min(kColumnBlock, W - w0), tile, scratch);
  });
}

// Softmax numerators of the rows of a tile, in place: e[i, j] ← exp(e[i, j] − max_i), each row's max
// and sum written `stride` apart. With skip_diagonal, e[i, i] is left out (set to 0): the pixel itself belongs
// to its row block, not its column block. An energy of −inf (q·k against an infinite k) has weight 0 also
// when the row's max is −inf (exp(−inf − (−inf)) would be NaN); a NaN energy makes every weight NaN. A
// row with nothing left gets max −inf and sum 0.
template <typename scalar_t>
void exponentiate_rows(scalar_t* e, int64_t n, bool skip_diagonal, scalar_t* max_out, int64_t stride,
                       scalar_t* sum_out) {
  for (int64_t i = 0; i < n; ++i) {
    scalar_t* row = e + i * n;
    scalar_t max = -std::numeric_limits<scalar_t>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      if (!(skip_diagonal && j == i)) max = std::max(max, row[j]);
    }
    scalar_t sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const bool zero = (skip_diagonal && j == i) || row[j] == -std::numeric_limits<scalar_t>::infinity();
      row[j] = zero ? scalar_t(0) : std::exp(row[j] - max);
      sum += row[j];
    }
    max_out[i * stride] = max;
    sum_out[i * stride] = sum;
  }
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention");
  auto q = to_compute_dtype(q_in).contiguous(), k = to_compute_dtype(k_in).contiguous();
  auto v = to_compute_dtype(v_in).contiguous();
  const int64_t B = q.size(0), H = q.size(2), W = q.size(3), C = v.size(1), HW = H * W;
  auto out = at::empty_like(v);
  auto lse = at::empty({B, H, W}, v.options());
  auto col_max = at::empty({B, H, W}, v.options()), col_sum = at::empty_like(col_max);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "criss_cross_attention_cpu", [&] {
    // Columns: out[:, :, w] ← unnormalised column-block output, with the block's max and sum.
    for_each_column_block(B, H, W, v.options(), [&](int64_t b, int64_t w0, int64_t n, at::Tensor& e, at::Tensor&) {
      auto qc = columns_of(q, b, w0, n).contiguous(), kc = columns_of(k, b, w0, n).contiguous();
      auto vc = columns_of(v, b, w0, n).contiguous();
      auto oc = at::empty_like(vc);
      for (int64_t j = 0; j < n; ++j) {
        at::mm_out(e, qc[j].t(), kc[j]);  // e[i, i'] = q_i·k_i'
        const int64_t first = b * HW + w0 + j;  // pixel (0, w); pixels of the column are W apart
        exponentiate_rows(e.mutable_data_ptr<scalar_t>(), H, /*skip_diagonal=*/true,
                          col_max.mutable_data_ptr<scalar_t>() + first, W, col_sum.mutable_data_ptr<scalar_t>() + first);
        auto oc_j = oc[j];
        at::mm_out(oc_j, vc[j], e.t());  // out[c, i] = Σ_i' v[c, i']·e[i, i']
      }
      columns_of(out, b, w0, n).copy_(oc);
    });
    // Rows: the row block, merged with the column block into the output and the log-sum-exp.
    for_each_task(B * H, W, v.options(), [&](int64_t t, at::Tensor& e, at::Tensor&) {
      const int64_t b = t / H, h = t % H;
      at::mm_out(e, row_of(q, b, h).t(), row_of(k, b, h));
      std::vector<scalar_t> row_max(W), row_sum(W);
      exponentiate_rows(e.mutable_data_ptr<scalar_t>(), W, /*skip_diagonal=*/false, row_max.data(), 1, row_sum.data());
      auto partial = at::mm(row_of(v, b, h), e.t());  // [C, W]
      const scalar_t* partial_ptr = partial.const_data_ptr<scalar_t>();
      scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>() + b * C * HW + h * W;
      const int64_t first = b * HW + h * W;
      std::vector<scalar_t> row_weight(W), col_weight(W);
      for (int64_t w = 0; w < W; ++w) {
        const scalar_t cmax = col_max.const_data_ptr<scalar_t>()[first + w];
        const scalar_t csum = col_sum.const_data_ptr<scalar_t>()[first + w];
        const scalar_t max = std::max(row_max[w], cmax);  // −inf only if every energy is: NaN, as softmax's
        const scalar_t rs = std::exp(row_max[w] - max), cs = std::exp(cmax - max);
        const scalar_t total = row_sum[w] * rs + csum * cs;
        lse.mutable_data_ptr<scalar_t>()[first + w] = max + std::log(total);
        row_weight[w] = rs / total;
        col_weight[w] = cs / total;
      }
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t w = 0; w < W; ++w) {
          out_ptr[c * HW + w] = row_weight[w] * partial_ptr[c * W + w] + col_weight[w] * out_ptr[c * HW + w];
        }
      }
    });
  });
  return {out.to(v_in.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention_backward");
  check_attention_outputs(grad_in, out_in, lse_in, v_in, "criss_cross_attention_backward");
  auto q = to_compute_dtype(q_in).contiguous(), k = to_compute_dtype(k_in).contiguous();
  auto v = to_compute_dtype(v_in).contiguous(), g = to_compute_dtype(grad_in).contiguous();
  auto out = to_compute_dtype(out_in).contiguous();
  auto lse = lse_in.contiguous();
  const int64_t B = q.size(0), H = q.size(2), W = q.size(3), C = v.size(1), HW = H * W;
  auto grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  auto d = at::empty({B, H, W}, v.options());  // D = Σ_c g·out per pixel, filled by the row pass
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "criss_cross_attention_backward_cpu", [&] {
    // S = softmax weights and dS = S·(g·v − D) of one block, in place over (energies, g·v).
    auto weights_and_grads = [&](at::Tensor& s, at::Tensor& ds, int64_t n, bool skip_diagonal, int64_t first,
                                 int64_t stride) {
      scalar_t* s_ptr = s.mutable_data_ptr<scalar_t>();
      scalar_t* ds_ptr = ds.mutable_data_ptr<scalar_t>();
      const scalar_t* lse_ptr = lse.const_data_ptr<scalar_t>() + first;
      const scalar_t* d_ptr = d.const_data_ptr<scalar_t>() + first;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          const int64_t e = i * n + j;
          s_ptr[e] = (skip_diagonal && i == j) ? scalar_t(0) : attention_weight(s_ptr[e], lse_ptr[i * stride]);
          ds_ptr[e] = energy_grad(s_ptr[e], ds_ptr[e], d_ptr[i * stride]);
        }
      }
    };
    // Rows first (they also compute D); they write the gradients, the columns add to them.
    for_each_task(B * H, W, v.options(), [&](int64_t t, at::Tensor& s, at::Tensor& ds) {
      const int64_t b = t / H, h = t % H;
      auto ql = row_of(q, b, h), kl = row_of(k, b, h), vl = row_of(v, b, h), gl = row_of(g, b, h);
      const scalar_t* g_ptr = g.const_data_ptr<scalar_t>() + b * C * HW + h * W;
      const scalar_t* o_ptr = out.const_data_ptr<scalar_t>() + b * C * HW + h * W;
      scalar_t* d_line = d.mutable_data_ptr<scalar_t>() + b * HW + h * W;
      std::fill(d_line, d_line + W, scalar_t(0));
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t w = 0; w < W; ++w) d_line[w] += g_ptr[c * HW + w] * o_ptr[c * HW + w];
      }
      at::mm_out(s, ql.t(), kl);   // energies e[i, j]
      at::mm_out(ds, gl.t(), vl);  // g_i·v_j
      weights_and_grads(s, ds, W, /*skip_diagonal=*/false, b * HW + h * W, 1);
      auto gq = row_of(grad_q, b, h), gk = row_of(grad_k, b, h), gv = row_of(grad_v, b, h);
      at::mm_out(gq, kl, ds.t());  // ∂q_i = Σ_j dS[i, j]·k_j
      at::mm_out(gk, ql, ds);      // ∂k_j = Σ_i dS[i, j]·q_i
      at::mm_out(gv, gl, s);       // ∂v_j = Σ_i S[i, j]·g_i
    });
    for_each_column_block(B, H, W, v.options(), [&](int64_t b, int64_t w0, int64_t n, at::Tensor& s, at::Tensor& ds) {
      auto qc = columns_of(q, b, w0, n).contiguous(), kc = columns_of(k, b, w0, n).contiguous();
      auto vc = columns_of(v, b, w0, n).contiguous(), gc = columns_of(g, b, w0, n).contiguous();
      auto gqc = at::empty_like(qc), gkc = at::empty_like(kc), gvc = at::empty_like(vc);
      for (int64_t j = 0; j < n; ++j) {
        at::mm_out(s, qc[j].t(), kc[j]);
        at::mm_out(ds, gc[j].t(), vc[j]);
        weights_and_grads(s, ds, H, /*skip_diagonal=*/true, b * HW + w0 + j, W);
        auto gq = gqc[j], gk = gkc[j], gv = gvc[j];
        at::mm_out(gq, kc[j], ds.t());
        at::mm_out(gk, qc[j], ds);
        at::mm_out(gv, gc[j], s);
      }
      columns_of(grad_q, b, w0, n).add_(gqc);
      columns_of(grad_k, b, w0, n).add_(gkc);
      columns_of(grad_v, b, w0, n).add_(gvc);
    });
  });
  return {grad_q.to(q_in.scalar_type()), grad_k.to(k_in.scalar_type()), grad_v.to(v_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CPU, m) {
  m.impl("criss_cross_affinity", &affinity_cpu);
  m.impl("criss_cross_aggregate", &aggregate_cpu<false>);
  m.impl("criss_cross_aggregate_transposed", &aggregate_cpu<true>);
  m.impl("criss_cross_attention", &attention_cpu);
  m.impl("criss_cross_attention_backward", &attention_backward_cpu);
}

}  // namespace criss_cross
}  // namespace attnkern
