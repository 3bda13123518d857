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
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_parallel.h"
#include "common/dtype.h"
#include "criss_cross/criss_cross.h"
#include "criss_cross/criss_cross_checks.h"

#define ATTNKERN_CPU_KERNEL_BODY "criss_cross/criss_cross_cpu_kernel.h"
#include "common/cpu_foreach_capability.h"

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
// energies never exist; the largest temporary is the backward's g·v of every row, [B·H, W, W] (about
// half their size). Columns are taken kColumnBlock at a time into contiguous [columns, C, H] copies
// (gather_columns: whole cache lines read, and they stay in cache).

constexpr int64_t kColumnBlock = 16;  // a 64-byte line of float

// Row h of sample b of x [B, C, H, W]: a [C, W] view.
at::Tensor row_of(const at::Tensor& x, int64_t b, int64_t h) { return x[b].select(1, h); }

// f(n) for a block of n columns, n as a compile-time constant where it is kColumnBlock (every block but an
// image's last), so that the staging loops below have constant trip counts and unroll.
template <typename F>
void with_block_width(int64_t n, F f) {
  if (n == kColumnBlock) {
    f(std::integral_constant<int64_t, kColumnBlock>{});
  } else {
    f(n);
  }
}

// Columns w0 .. w0 + n − 1 of sample b of x [B, C, H, W] (contiguous) into `block`, [n, C, H] (contiguous): the
// sample's [C·H, W] matrix 16 rows at a time, each row's n adjacent values (one or two cache lines) into a 16×16
// staging tile, its columns out as 16 consecutive values of each of the n [C, H] matrices — contiguous reads and
// writes on both sides. (ATen's copy of the permuted view walks all C·H rows once a column.)
template <typename scalar_t>
void gather_columns(const at::Tensor& x, int64_t b, int64_t w0, at::Tensor& block) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), rows = C * H;
  const scalar_t* from = x.const_data_ptr<scalar_t>() + b * rows * W + w0;
  scalar_t* to = block.mutable_data_ptr<scalar_t>();
  with_block_width(block.size(0), [&](auto n) {
    scalar_t staging[kColumnBlock][kColumnBlock];
    int64_t r0 = 0;
    for (; r0 + kColumnBlock <= rows; r0 += kColumnBlock) {
      for (int64_t r = 0; r < kColumnBlock; ++r) {
        for (int64_t j = 0; j < n; ++j) staging[j][r] = from[(r0 + r) * W + j];
      }
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t r = 0; r < kColumnBlock; ++r) to[j * rows + r0 + r] = staging[j][r];
      }
    }
    for (int64_t r = r0; r < rows; ++r) {  // the last rows, fewer than 16
      for (int64_t j = 0; j < n; ++j) to[j * rows + r] = from[r * W + j];
    }
  });
}

// An [n, C, H] block (contiguous) written (add = false) or added into columns w0 .. w0 + n − 1 of sample b of x
// (contiguous), through a 16×16 staging tile as gather_columns.
template <bool add, typename scalar_t>
void scatter_columns(const at::Tensor& block, at::Tensor& x, int64_t b, int64_t w0) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), rows = C * H;
  const scalar_t* from = block.const_data_ptr<scalar_t>();
  scalar_t* to = x.mutable_data_ptr<scalar_t>() + b * rows * W + w0;
  auto put = [](scalar_t& out, scalar_t value) {
    if constexpr (add) {
      out += value;
    } else {
      out = value;
    }
  };
  with_block_width(block.size(0), [&](auto n) {
    scalar_t staging[kColumnBlock][kColumnBlock];
    int64_t r0 = 0;
    for (; r0 + kColumnBlock <= rows; r0 += kColumnBlock) {
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t r = 0; r < kColumnBlock; ++r) staging[r][j] = from[j * rows + r0 + r];
      }
      for (int64_t r = 0; r < kColumnBlock; ++r) {
        for (int64_t j = 0; j < n; ++j) put(to[(r0 + r) * W + j], staging[r][j]);
      }
    }
    for (int64_t r = r0; r < rows; ++r) {
      for (int64_t j = 0; j < n; ++j) put(to[r * W + j], from[j * rows + r]);
    }
  });
}

// Runs body(task, tile, scratch) for tasks 0 .. count − 1, in parallel, with an n×n tile and a [scratch_rows, n]
// buffer, both allocated once a thread (a task's fresh buffer of ~200 KB was fresh pages, each faulted in).
template <typename Body>
void for_each_task(int64_t count, int64_t n, const at::TensorOptions& options, Body body, int64_t scratch_rows = 0) {
  parallel_for_aten(0, count, 1, [&](int64_t t0, int64_t t1) {
    auto tile = at::empty({n, n}, options);
    auto scratch = at::empty({scratch_rows, n}, options);
    for (int64_t t = t0; t < t1; ++t) body(t, tile, scratch);
  });
}

// Runs body(b, w0, blocks, tile, scratch) for every block of up to kColumnBlock columns, with one [n, channels[i], H]
// buffer a tensor in `blocks` (n the block's width), allocated once a thread: a task's buffers are megabytes, and a
// fresh allocation of that size is fresh pages, each faulted in.
template <typename Body>
void for_each_column_block(int64_t batch, int64_t H, int64_t W, std::initializer_list<int64_t> channels,
                           const at::TensorOptions& options, Body body) {
  const int64_t blocks = (W + kColumnBlock - 1) / kColumnBlock;
  parallel_for_aten(0, batch * blocks, 1, [&](int64_t t0, int64_t t1) {
    auto tile = at::empty({H, H}, options);
    auto scratch = at::empty({H, H}, options);
    std::vector<at::Tensor> buffers, views(channels.size());
    for (int64_t c : channels) buffers.push_back(at::empty({kColumnBlock, c, H}, options));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t w0 = (t % blocks) * kColumnBlock, n = std::min(kColumnBlock, W - w0);
      for (size_t i = 0; i < buffers.size(); ++i) views[i] = buffers[i].narrow(0, 0, n);
      body(t / blocks, w0, views, tile, scratch);
    }
  });
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
    const auto exponentiate = ATTNKERN_CPU_DISPATCH(exponentiate_rows<scalar_t>);  // this CPU's version
    // Columns: out[:, :, w] ← unnormalised column-block output, with the block's max and sum.
    const int64_t Cq = q.size(1);
    for_each_column_block(B, H, W, {Cq, Cq, C, C}, v.options(),
                          [&](int64_t b, int64_t w0, std::vector<at::Tensor>& blocks, at::Tensor& e, at::Tensor&) {
      auto &qc = blocks[0], &kc = blocks[1], &vc = blocks[2], &oc = blocks[3];
      gather_columns<scalar_t>(q, b, w0, qc);
      gather_columns<scalar_t>(k, b, w0, kc);
      gather_columns<scalar_t>(v, b, w0, vc);
      for (int64_t j = 0; j < qc.size(0); ++j) {
        at::mm_out(e, qc[j].t(), kc[j]);  // e[i, i'] = q_i·k_i'
        const int64_t first = b * HW + w0 + j;  // pixel (0, w); pixels of the column are W apart
        exponentiate(e.mutable_data_ptr<scalar_t>(), H, /*skip_diagonal=*/true,
                     col_max.mutable_data_ptr<scalar_t>() + first, W, col_sum.mutable_data_ptr<scalar_t>() + first);
        auto oc_j = oc[j];
        at::mm_out(oc_j, vc[j], e.t());  // out[c, i] = Σ_i' v[c, i']·e[i, i']
      }
      scatter_columns<false, scalar_t>(oc, out, b, w0);
    });
    // Rows: the row block, merged with the column block into the output and the log-sum-exp.
    for_each_task(B * H, W, v.options(), [&](int64_t t, at::Tensor& e, at::Tensor& partial) {
      const int64_t b = t / H, h = t % H;
      at::mm_out(e, row_of(q, b, h).t(), row_of(k, b, h));
      std::vector<scalar_t> row_max(W), row_sum(W);
      exponentiate(e.mutable_data_ptr<scalar_t>(), W, /*skip_diagonal=*/false, row_max.data(), 1, row_sum.data());
      at::mm_out(partial, row_of(v, b, h), e.t());  // [C, W]
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
    }, /*scratch_rows=*/C);
  });
  return {out.to(v_in.scalar_type()), lse};
}

// The backward takes three passes because D = Σ_p S_p·(g·v_p) runs over a pixel's row and its column (summed
// from the products, as the CUDA kernels sum it: Σ_c g·out from an output rounded to 16 bits would cost fp16 and
// bf16 gradients of q and k a factor ~3 in accuracy): the rows (S, g·v — kept, [B·H, W, W] — D's row part and
// ∂v), the columns (D whole; dS = S·(g·v − D); ∂q, ∂k and ∂v), the rows again (dS from the kept g·v; ∂q, ∂k).
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in) {
  check_attention_inputs(q_in, k_in, v_in, "criss_cross_attention_backward");
  check_attention_outputs(grad_in, out_in, lse_in, v_in, "criss_cross_attention_backward");
  auto q = to_compute_dtype(q_in).contiguous(), k = to_compute_dtype(k_in).contiguous();
  auto v = to_compute_dtype(v_in).contiguous(), g = to_compute_dtype(grad_in).contiguous();
  auto lse = lse_in.contiguous();
  const int64_t B = q.size(0), H = q.size(2), W = q.size(3), HW = H * W;
  auto grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  auto d = at::empty({B, H, W}, v.options());          // D per pixel: the rows' part, then whole
  auto row_gv = at::empty({B * H, W, W}, v.options());  // g_i·v_j of every image row
  // An n×n block's weights S = exp(e − lse) in place of its energies (ATen's vectorised exp; 0 on the diagonal
  // with skip_diagonal); `lse_of` holds its pixels' lse, [n].
  auto weights = [](at::Tensor& s, const at::Tensor& lse_of, bool skip_diagonal) {
    s.sub_(lse_of.unsqueeze(1)).exp_();
    if (skip_diagonal) s.fill_diagonal_(0);
  };
  auto lse_rows = lse.view({B * H, W}), d_rows = d.view({B * H, W});
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "criss_cross_attention_backward_cpu", [&] {
    // Over an n×n block whose pixel i has its D at d_of[i·stride]: D (+)= Σ_j S·(g·v), or dS = S·(g·v − D) in
    // place of g·v.
    auto add_to_d = [](const at::Tensor& s, const at::Tensor& gv, int64_t n, bool first_part, scalar_t* d_of,
                       int64_t stride) {
      const scalar_t* s_ptr = s.const_data_ptr<scalar_t>();
      const scalar_t* gv_ptr = gv.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        scalar_t sum = first_part ? scalar_t(0) : d_of[i * stride];
        for (int64_t j = 0; j < n; ++j) sum += s_ptr[i * n + j] * gv_ptr[i * n + j];
        d_of[i * stride] = sum;
      }
    };
    auto energy_grads = [](const at::Tensor& s, at::Tensor& gv, int64_t n, const scalar_t* d_of, int64_t stride) {
      const scalar_t* s_ptr = s.const_data_ptr<scalar_t>();
      scalar_t* ds_ptr = gv.mutable_data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          ds_ptr[i * n + j] = energy_grad(s_ptr[i * n + j], ds_ptr[i * n + j], d_of[i * stride]);
        }
      }
    };
    scalar_t* d_ptr = d.mutable_data_ptr<scalar_t>();
    // Rows: S, the kept g·v, D's row part, ∂v_j = Σ_i S[i, j]·g_i (written; the columns add theirs).
    for_each_task(B * H, W, v.options(), [&](int64_t t, at::Tensor& s, at::Tensor&) {
      const int64_t b = t / H, h = t % H;
      auto ql = row_of(q, b, h), gl = row_of(g, b, h), gv = row_gv[t];
      at::mm_out(s, ql.t(), row_of(k, b, h));  // energies e[i, j]
      at::mm_out(gv, gl.t(), row_of(v, b, h));  // g_i·v_j
      weights(s, lse_rows[t], /*skip_diagonal=*/false);
      add_to_d(s, gv, W, /*first_part=*/true, d_ptr + t * W, 1);
      auto gvl = row_of(grad_v, b, h);
      at::mm_out(gvl, gl, s);
    });
    // Columns: D whole, dS, and ∂q, ∂k (written; the rows add theirs) and ∂v (added).
    const int64_t Cq = q.size(1), C = v.size(1);
    for_each_column_block(B, H, W, {Cq, Cq, C, C, Cq, Cq, C}, v.options(),
                          [&](int64_t b, int64_t w0, std::vector<at::Tensor>& blocks, at::Tensor& s, at::Tensor& ds) {
      auto &qc = blocks[0], &kc = blocks[1], &vc = blocks[2], &gc = blocks[3];
      auto &gqc = blocks[4], &gkc = blocks[5], &gvc = blocks[6];
      gather_columns<scalar_t>(q, b, w0, qc);
      gather_columns<scalar_t>(k, b, w0, kc);
      gather_columns<scalar_t>(v, b, w0, vc);
      gather_columns<scalar_t>(g, b, w0, gc);
      for (int64_t j = 0; j < qc.size(0); ++j) {
        scalar_t* d_of = d_ptr + b * HW + w0 + j;
        at::mm_out(s, qc[j].t(), kc[j]);
        at::mm_out(ds, gc[j].t(), vc[j]);
        weights(s, lse[b].select(1, w0 + j), /*skip_diagonal=*/true);
        add_to_d(s, ds, H, /*first_part=*/false, d_of, W);
        energy_grads(s, ds, H, d_of, W);
        auto gq = gqc[j], gk = gkc[j], gv = gvc[j];
        at::mm_out(gq, kc[j], ds.t());  // ∂q_i = Σ_j dS[i, j]·k_j
        at::mm_out(gk, qc[j], ds);      // ∂k_j = Σ_i dS[i, j]·q_i
        at::mm_out(gv, gc[j], s);       // ∂v_j = Σ_i S[i, j]·g_i
      }
      scatter_columns<false, scalar_t>(gqc, grad_q, b, w0);
      scatter_columns<false, scalar_t>(gkc, grad_k, b, w0);
      scatter_columns<true, scalar_t>(gvc, grad_v, b, w0);
    });
    // Rows again: dS from the kept g·v and the whole D; ∂q and ∂k added.
    for_each_task(B * H, W, v.options(), [&](int64_t t, at::Tensor& s, at::Tensor&) {
      const int64_t b = t / H, h = t % H;
      auto ql = row_of(q, b, h), kl = row_of(k, b, h), ds = row_gv[t];
      at::mm_out(s, ql.t(), kl);
      weights(s, lse_rows[t], /*skip_diagonal=*/false);
      energy_grads(s, ds, W, d_ptr + t * W, 1);
      row_of(grad_q, b, h).addmm_(kl, ds.t());
      row_of(grad_k, b, h).addmm_(ql, ds);
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
