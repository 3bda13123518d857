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
// Each pixel's softmax runs over two blocks, its row and its column. The CPU kernels take them
// apart, one image row (then one column) per task with BLAS products on a W×W (H×H) energy tile, and
// merge the two blocks through their maxima and sums; the [B, H+W−1, H, W] energies never exist.
// Columns run on transposed copies ([B, C, W, H]) so that their products see unit-stride rows.

at::Tensor to_compute_dtype(const at::Tensor& t) {
  auto st = t.scalar_type();
  return (st == at::kHalf || st == at::kBFloat16) ? t.to(at::kFloat) : t;
}

// Softmax numerators of the rows of a tile, in place: e[i, j] ← exp(e[i, j] − max_i), with each row's
// max and sum written out. With skip_diagonal, e[i, i] is left out (set to 0): the pixel itself
// belongs to its row block, not its column block. A row with nothing left gets max −inf, sum 0.
template <typename scalar_t>
void exponentiate_rows(scalar_t* e, int64_t rows, int64_t cols, bool skip_diagonal, scalar_t* max_out,
                       scalar_t* sum_out) {
  for (int64_t i = 0; i < rows; ++i) {
    scalar_t* row = e + i * cols;
    scalar_t max = -std::numeric_limits<scalar_t>::infinity();
    for (int64_t j = 0; j < cols; ++j) {
      if (!(skip_diagonal && j == i)) max = std::max(max, row[j]);
    }
    scalar_t sum = 0;
    for (int64_t j = 0; j < cols; ++j) {
      row[j] = (skip_diagonal && j == i) ? scalar_t(0) : std::exp(row[j] - max);
      sum += row[j];
    }
    max_out[i] = max;
    sum_out[i] = sum;
  }
}

// Runs body(b, line, tile) for every (sample, image row) of x [B, C, L, N] — for columns, x is the
// transposed copy — with `tile` an N×N scratch.
template <typename Body>
void for_each_line(int64_t batch, int64_t lines, int64_t n, const at::TensorOptions& options, Body body) {
  at::parallel_for(0, batch * lines, 1, [&](int64_t r0, int64_t r1) {
    auto tile = at::empty({n, n}, options);
    auto scratch = at::empty({n, n}, options);
    for (int64_t r = r0; r < r1; ++r) body(r / lines, r % lines, tile, scratch);
  });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention");
  auto q = to_compute_dtype(q_in).contiguous(), k = to_compute_dtype(k_in).contiguous();
  auto v = to_compute_dtype(v_in).contiguous();
  const int64_t B = q.size(0), H = q.size(2), W = q.size(3);
  auto out = at::empty_like(v);
  if (B == 0) return {out.to(v_in.scalar_type()), at::empty({0, H, W}, v.options())};
  auto qt = q.transpose(2, 3).contiguous(), kt = k.transpose(2, 3).contiguous(), vt = v.transpose(2, 3).contiguous();
  auto out_col = at::empty_like(vt);
  auto row_max = at::empty({B, H, W}, v.options()), row_sum = at::empty_like(row_max);
  auto col_max = at::empty({B, W, H}, v.options()), col_sum = at::empty_like(col_max);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "criss_cross_attention_cpu", [&] {
    // One block of every pixel's positions: pixel row i of `lines` x[b, :, line, :] against all of them.
    auto block = [&](const at::Tensor& x_q, const at::Tensor& x_k, const at::Tensor& x_v, at::Tensor& x_out,
                     at::Tensor& max, at::Tensor& sum, int64_t lines, int64_t n, bool skip_diagonal) {
      for_each_line(B, lines, n, v.options(), [&](int64_t b, int64_t line, at::Tensor& e, at::Tensor&) {
        at::mm_out(e, x_q[b].select(1, line).t(), x_k[b].select(1, line));  // e[i, j] = q_i·k_j
        const int64_t offset = (b * lines + line) * n;
        exponentiate_rows(e.mutable_data_ptr<scalar_t>(), n, n, skip_diagonal,
                          max.mutable_data_ptr<scalar_t>() + offset, sum.mutable_data_ptr<scalar_t>() + offset);
        auto out_line = x_out[b].select(1, line);
        at::mm_out(out_line, x_v[b].select(1, line), e.t());  // out[c, i] = Σ_j v[c, j]·e[i, j]
      });
    };
    block(q, k, v, out, row_max, row_sum, H, W, /*skip_diagonal=*/false);
    block(qt, kt, vt, out_col, col_max, col_sum, W, H, /*skip_diagonal=*/true);
  });
  // Merge the blocks: lse = m + log(Σ_row·e^{m_row − m} + Σ_col·e^{m_col − m}), m the larger max.
  auto col_max_hw = col_max.transpose(1, 2), col_sum_hw = col_sum.transpose(1, 2);
  auto max = at::maximum(row_max, col_max_hw);
  auto row_scale = (row_max - max).exp_(), col_scale = (col_max_hw - max).exp_();
  auto total = row_sum * row_scale + col_sum_hw * col_scale;
  auto lse = max + total.log();
  out.mul_((row_scale / total).unsqueeze(1)).addcmul_(out_col.transpose(2, 3), (col_scale / total).unsqueeze(1));
  return {out.to(v_in.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention_backward");
  check_attention_outputs(grad_in, out_in, lse_in, v_in, "criss_cross_attention_backward");
  auto q = to_compute_dtype(q_in).contiguous(), k = to_compute_dtype(k_in).contiguous();
  auto v = to_compute_dtype(v_in).contiguous(), g = to_compute_dtype(grad_in).contiguous();
  const int64_t B = q.size(0), H = q.size(2), W = q.size(3);
  auto grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  if (B == 0) return {grad_q.to(q_in.scalar_type()), grad_k.to(k_in.scalar_type()), grad_v.to(v_in.scalar_type())};
  auto d = (g * to_compute_dtype(out_in)).sum(1);  // D = Σ_c g·out per pixel
  auto lse = lse_in.contiguous();
  auto transposed = [](const at::Tensor& x) { return x.transpose(-2, -1).contiguous(); };
  auto qt = transposed(q), kt = transposed(k), vt = transposed(v), gt = transposed(g);
  auto lse_t = transposed(lse), d_t = transposed(d);
  auto grad_qt = at::empty_like(qt), grad_kt = at::empty_like(kt), grad_vt = at::empty_like(vt);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "criss_cross_attention_backward_cpu", [&] {
    auto block = [&](const at::Tensor& x_q, const at::Tensor& x_k, const at::Tensor& x_v, const at::Tensor& x_g,
                     const at::Tensor& x_lse, const at::Tensor& x_d, at::Tensor& gq, at::Tensor& gk, at::Tensor& gv,
                     int64_t lines, int64_t n, bool skip_diagonal) {
      for_each_line(B, lines, n, v.options(), [&](int64_t b, int64_t line, at::Tensor& s, at::Tensor& ds) {
        auto ql = x_q[b].select(1, line), kl = x_k[b].select(1, line);
        auto vl = x_v[b].select(1, line), gl = x_g[b].select(1, line);
        at::mm_out(s, ql.t(), kl);   // energies e[i, j]
        at::mm_out(ds, gl.t(), vl);  // g_i·v_j
        scalar_t* s_ptr = s.mutable_data_ptr<scalar_t>();
        scalar_t* ds_ptr = ds.mutable_data_ptr<scalar_t>();
        const scalar_t* lse_ptr = x_lse.const_data_ptr<scalar_t>() + (b * lines + line) * n;
        const scalar_t* d_ptr = x_d.const_data_ptr<scalar_t>() + (b * lines + line) * n;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            const int64_t e = i * n + j;
            const bool excluded = skip_diagonal && i == j;
            s_ptr[e] = excluded ? scalar_t(0) : attention_weight(s_ptr[e], lse_ptr[i]);
            ds_ptr[e] = energy_grad(s_ptr[e], ds_ptr[e], d_ptr[i]);
          }
        }
        auto gq_l = gq[b].select(1, line), gk_l = gk[b].select(1, line), gv_l = gv[b].select(1, line);
        at::mm_out(gq_l, kl, ds.t());  // ∂q_i = Σ_j dS[i, j]·k_j
        at::mm_out(gk_l, ql, ds);      // ∂k_j = Σ_i dS[i, j]·q_i
        at::mm_out(gv_l, gl, s);       // ∂v_j = Σ_i S[i, j]·g_i
      });
    };
    block(q, k, v, g, lse, d, grad_q, grad_k, grad_v, H, W, /*skip_diagonal=*/false);
    block(qt, kt, vt, gt, lse_t, d_t, grad_qt, grad_kt, grad_vt, W, H, /*skip_diagonal=*/true);
  });
  grad_q.add_(grad_qt.transpose(2, 3));
  grad_k.add_(grad_kt.transpose(2, 3));
  grad_v.add_(grad_vt.transpose(2, 3));
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
