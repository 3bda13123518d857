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

// ---- fused attention ----------------------------------------------------------------------
// Each pixel's softmax runs over two blocks of positions, its column and its row. The CPU kernels
// take them apart — one image column, then one image row, per task — with BLAS products on an H×H
// (W×W) energy tile, and merge the blocks through their maxima and sums: the [B, H+W−1, H, W]
// energies never exist, nor does any other full-size temporary. Column lines are strided views
// ([C, H] with stride W); BLAS sees per-line copies of them, which stay in cache.

at::Tensor to_compute_dtype(const at::Tensor& t) {
  auto st = t.scalar_type();
  return (st == at::kHalf || st == at::kBFloat16) ? t.to(at::kFloat) : t;
}

// Line `line` of sample b: an image row ([C, W]) or column ([C, H]) of x [B, C, H, W].
at::Tensor line_of(const at::Tensor& x, int64_t b, int64_t line, bool column) {
  return x[b].select(column ? 2 : 1, line);
}

// Runs body(b, line, tile, scratch) for every (sample, line), in parallel, with two n×n tiles.
template <typename Body>
void for_each_line(int64_t batch, int64_t lines, int64_t n, const at::TensorOptions& options, Body body) {
  at::parallel_for(0, batch * lines, 1, [&](int64_t r0, int64_t r1) {
    auto tile = at::empty({n, n}, options);
    auto scratch = at::empty({n, n}, options);
    for (int64_t r = r0; r < r1; ++r) body(r / lines, r % lines, tile, scratch);
  });
}

// Softmax numerators of the rows of a tile, in place: e[i, j] ← exp(e[i, j] − max_i), each row's max
// and sum written out. With skip_diagonal, e[i, i] is left out (set to 0): the pixel itself belongs
// to its row block, not its column block. A row with nothing left gets max −inf and sum 0.
template <typename scalar_t>
void exponentiate_rows(scalar_t* e, int64_t n, bool skip_diagonal, scalar_t* max_out, int64_t max_stride,
                       scalar_t* sum_out) {
  for (int64_t i = 0; i < n; ++i) {
    scalar_t* row = e + i * n;
    scalar_t max = -std::numeric_limits<scalar_t>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      if (!(skip_diagonal && j == i)) max = std::max(max, row[j]);
    }
    scalar_t sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      row[j] = (skip_diagonal && j == i) ? scalar_t(0) : std::exp(row[j] - max);
      sum += row[j];
    }
    max_out[i * max_stride] = max;
    sum_out[i * max_stride] = sum;
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
    for_each_line(B, W, H, v.options(), [&](int64_t b, int64_t w, at::Tensor& e, at::Tensor&) {
      at::mm_out(e, line_of(q, b, w, true).t(), line_of(k, b, w, true));  // e[i, j] = q_i·k_j
      const int64_t first = b * HW + w;  // pixel (0, w); pixels of the column are W apart
      exponentiate_rows(e.mutable_data_ptr<scalar_t>(), H, /*skip_diagonal=*/true,
                        col_max.mutable_data_ptr<scalar_t>() + first, W, col_sum.mutable_data_ptr<scalar_t>() + first);
      auto out_line = line_of(out, b, w, true);
      at::mm_out(out_line, line_of(v, b, w, true), e.t());  // out[c, i] = Σ_j v[c, j]·e[i, j]
    });
    // Rows: the row block, merged with the column block into the output and the log-sum-exp.
    for_each_line(B, H, W, v.options(), [&](int64_t b, int64_t h, at::Tensor& e, at::Tensor& row_out) {
      at::mm_out(e, line_of(q, b, h, false).t(), line_of(k, b, h, false));
      std::vector<scalar_t> row_max(W), row_sum(W);
      exponentiate_rows(e.mutable_data_ptr<scalar_t>(), W, /*skip_diagonal=*/false, row_max.data(), 1, row_sum.data());
      auto partial = at::mm(line_of(v, b, h, false), e.t());  // [C, W]
      const scalar_t* partial_ptr = partial.const_data_ptr<scalar_t>();
      scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>() + b * C * HW + h * W;
      const int64_t first = b * HW + h * W;
      std::vector<scalar_t> row_weight(W), col_weight(W);
      for (int64_t w = 0; w < W; ++w) {
        const scalar_t cmax = col_max.const_data_ptr<scalar_t>()[first + w];
        const scalar_t csum = col_sum.const_data_ptr<scalar_t>()[first + w];
        const scalar_t max = std::max(row_max[w], cmax);  // finite: the row block is never empty
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
    for_each_line(B, H, W, v.options(), [&](int64_t b, int64_t h, at::Tensor& s, at::Tensor& ds) {
      auto ql = line_of(q, b, h, false), kl = line_of(k, b, h, false);
      auto vl = line_of(v, b, h, false), gl = line_of(g, b, h, false);
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
      auto gq = line_of(grad_q, b, h, false), gk = line_of(grad_k, b, h, false), gv = line_of(grad_v, b, h, false);
      at::mm_out(gq, kl, ds.t());  // ∂q_i = Σ_j dS[i, j]·k_j
      at::mm_out(gk, ql, ds);      // ∂k_j = Σ_i dS[i, j]·q_i
      at::mm_out(gv, gl, s);       // ∂v_j = Σ_i S[i, j]·g_i
    });
    for_each_line(B, W, H, v.options(), [&](int64_t b, int64_t w, at::Tensor& s, at::Tensor& ds) {
      auto ql = line_of(q, b, w, true), kl = line_of(k, b, w, true);
      auto vl = line_of(v, b, w, true), gl = line_of(g, b, w, true);
      at::mm_out(s, ql.t(), kl);
      at::mm_out(ds, gl.t(), vl);
      weights_and_grads(s, ds, H, /*skip_diagonal=*/true, b * HW + w, W);
      line_of(grad_q, b, w, true).addmm_(kl, ds.t());
      line_of(grad_k, b, w, true).addmm_(ql, ds);
      line_of(grad_v, b, w, true).addmm_(gl, s);
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
