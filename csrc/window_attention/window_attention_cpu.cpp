// CPU kernels of the window-attention family: one task per window in the forward, one per window
// group in the backward, each going through the heads. A task gathers its window's q, k, v through the index maps of
// window_attention.h (no partition, no roll), works on N×N tiles that stay in cache, and writes its
// tokens' results back to image layout. Nothing N×N outlives a task.
//
// Tiles are kept transposed — S^T[j, i] for key j, query i — so that every loop over a tile runs
// along the queries in register blocks (cpu::accumulate_rows): the products with k, v, dO are sums of
// scaled rows, and the softmax over keys is an element-wise max/sum down the rows. The key-side
// gradients (dk, dv) run on the untransposed tiles the same way. Compiled per ISA (cpu_simd.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common/cpu_simd.h"
#include "window_attention/window_attention.h"

namespace attnkern {
namespace window_attention {
namespace {

// Everything a task reads: the tensors of the call, bias^T and mask^T in the accumulation type
// ([heads, N, N] and [nW, N, N], each tile transposed; null when absent).
template <typename scalar_t, typename acc_t>
struct Operands {
  WindowGrid grid;
  int64_t heads, d;
  acc_t scale;
  const scalar_t* qkv;
  const acc_t* bias_t;
  const acc_t* mask_t;

  int64_t sample_stride() const { return grid.H * grid.W * 3 * heads * d; }
};

// One task's buffers: one window, all heads. Tiles run over queries i (or keys j, untransposed) in the
// padded length L = padded(N); padding lanes hold zeros or finite values that no result reads.
template <typename acc_t>
struct Scratch {
  int64_t N, L, d;
  std::vector<int64_t> pixel;
  std::vector<int> region;
  std::vector<acc_t> offset_t;                          // [N, L]: region mask + explicit mask of the window
  std::vector<acc_t> q, k, v, grad_o;                   // per head [N, d]
  std::vector<acc_t> q_t, grad_o_t, dq_t, dk_t, dv_t;   // per head [d, L]
  std::vector<acc_t> lse, delta;                        // per head [L]
  std::vector<acc_t> tile, tile2, tile3, o_t;           // [N, L], [d, L]

  Scratch(int64_t N, int64_t d, int64_t heads)
      : N(N), L(cpu::padded(N)), d(d), pixel(N), region(N), offset_t(N * L), q(heads * N * d), k(heads * N * d),
        v(heads * N * d), grad_o(heads * N * d), q_t(heads * d * L), grad_o_t(heads * d * L), dq_t(heads * d * L),
        dk_t(heads * d * L), dv_t(heads * d * L), lse(heads * L), delta(heads * L), tile(N * L), tile2(N * L),
        tile3(N * L), o_t(d * L) {}

  // Head h's slice of a per-head buffer.
  acc_t* rows(std::vector<acc_t>& buffer, int64_t h) { return buffer.data() + h * N * d; }       // [N, d]
  acc_t* columns(std::vector<acc_t>& buffer, int64_t h) { return buffer.data() + h * d * L; }    // [d, L]
  acc_t* lanes(std::vector<acc_t>& buffer, int64_t h) { return buffer.data() + h * L; }          // [L]
};

// Window w's tokens (pixels and regions, row by row: no divisions per token) and the part of its
// logits that every head shares: the region mask and the explicit mask, as an [N, L] tile (keys j,
// queries i). Returns whether the window has such an offset.
template <typename scalar_t, typename acc_t>
ATTNKERN_ALWAYS_INLINE bool locate_window(const Operands<scalar_t, acc_t>& op, int64_t w, Scratch<acc_t>& s) {
  const WindowGrid& grid = op.grid;
  const int64_t N = s.N, L = s.L, windows_x = grid.W / grid.window;
  const int64_t y0 = (w / windows_x) * grid.window, x0 = (w % windows_x) * grid.window;
  for (int64_t ty = 0, t = 0; ty < grid.window; ++ty) {
    for (int64_t tx = 0; tx < grid.window; ++tx, ++t) {
      s.pixel[t] = grid.pixel_at(y0 + ty, x0 + tx);
      s.region[t] = grid.shift > 0 ? grid.region_at(y0 + ty, x0 + tx) : 0;
    }
  }
  if (grid.shift == 0 && op.mask_t == nullptr) return false;
  for (int64_t j = 0; j < N; ++j) {
    acc_t* row = s.offset_t.data() + j * L;
    for (int64_t i = 0; i < L; ++i) row[i] = 0;
    if (op.mask_t != nullptr) {
      const acc_t* mask_row = op.mask_t + (w * N + j) * N;
      for (int64_t i = 0; i < N; ++i) row[i] = mask_row[i];
    }
    if (grid.shift > 0) {
      for (int64_t i = 0; i < N; ++i) row[i] += region_penalty<acc_t>(s.region[i], s.region[j]);
    }
  }
  return true;
}

// Gathers every head of the located window of one sample, reading each pixel's q, k, v rows in order:
// q·scale as [N, d] and [d, L], k and v as [N, d], per head.
template <typename scalar_t, typename acc_t>
ATTNKERN_ALWAYS_INLINE void gather_window(const Operands<scalar_t, acc_t>& op, const scalar_t* qkv_b,
                                          Scratch<acc_t>& s) {
  const int64_t N = s.N, L = s.L, d = op.d, heads = op.heads;
  for (int64_t t = 0; t < N; ++t) {
    const scalar_t* src = qkv_b + qkv_offset(s.pixel[t], 0, 0, heads, d);  // [3, heads, d]
    for (int64_t h = 0; h < heads; ++h) {
      acc_t* q = s.rows(s.q, h) + t * d;
      acc_t* q_t = s.columns(s.q_t, h) + t;
      for (int64_t c = 0; c < d; ++c) q[c] = q_t[c * L] = op.scale * static_cast<acc_t>(src[h * d + c]);
    }
    for (int64_t h = 0; h < heads; ++h) {
      acc_t* k = s.rows(s.k, h) + t * d;
      for (int64_t c = 0; c < d; ++c) k[c] = static_cast<acc_t>(src[(heads + h) * d + c]);
    }
    for (int64_t h = 0; h < heads; ++h) {
      acc_t* v = s.rows(s.v, h) + t * d;
      for (int64_t c = 0; c < d; ++c) v[c] = static_cast<acc_t>(src[(2 * heads + h) * d + c]);
    }
  }
  for (int64_t h = 0; h < heads; ++h) {
    acc_t* q_t = s.columns(s.q_t, h);
    for (int64_t c = 0; c < d; ++c) {
      for (int64_t t = N; t < L; ++t) q_t[c * L + t] = 0;
    }
  }
}

// S^T[j, i] = q_i·k_j + bias + masks (logit_offset of window_attention.h: the head's bias, then the
// window's shared offset), for every key j and query i of head h.
template <typename scalar_t, typename acc_t>
ATTNKERN_ALWAYS_INLINE void logits_t(const Operands<scalar_t, acc_t>& op, int64_t h, bool has_offset, Scratch<acc_t>& s,
                                     acc_t* __restrict logits) {
  const int64_t N = s.N, L = s.L, d = op.d;
  const acc_t* k = s.rows(s.k, h);
  const acc_t* q_t = s.columns(s.q_t, h);
  for (int64_t j = 0; j < N; ++j) {
    acc_t* row = logits + j * L;
    if (has_offset) {
      const acc_t* offset_row = s.offset_t.data() + j * L;
      for (int64_t i = 0; i < L; ++i) row[i] = offset_row[i];
    } else {
      for (int64_t i = 0; i < L; ++i) row[i] = 0;
    }
    if (op.bias_t != nullptr) {
      const acc_t* bias_row = op.bias_t + (h * N + j) * N;
      for (int64_t i = 0; i < N; ++i) row[i] += bias_row[i];
    }
    cpu::accumulate_rows(k + j * d, 1, q_t, L, d, row, L);
  }
}

template <typename scalar_t, typename acc_t>
ATTNKERN_CPU_CLONES void forward_window(const Operands<scalar_t, acc_t>& op, int64_t b, int64_t w, Scratch<acc_t>& s,
                                        scalar_t* out, acc_t* lse) {
  const int64_t N = s.N, L = s.L, d = op.d, HW = op.grid.H * op.grid.W;
  const bool has_offset = locate_window(op, w, s);
  gather_window(op, op.qkv + b * op.sample_stride(), s);
  for (int64_t h = 0; h < op.heads; ++h) {
    acc_t* p_t = s.tile.data();
    logits_t(op, h, has_offset, s, p_t);
    acc_t* max = s.lanes(s.lse, h);
    acc_t* sum = s.lanes(s.delta, h);
    for (int64_t block = 0; block < L; block += cpu::kLanes) {  // softmax over keys j, per query column
      cpu::Block<acc_t> m = cpu::load(p_t + block), total = {};
      for (int64_t j = 1; j < N; ++j) m = cpu::maximum(m, cpu::load(p_t + j * L + block));
      for (int64_t j = 0; j < N; ++j) {
        const cpu::Block<acc_t> e = cpu::exp(cpu::load(p_t + j * L + block) - m);
        cpu::store(p_t + j * L + block, e);
        total += e;
      }
      cpu::store(max + block, m);
      cpu::store(sum + block, total);
    }
    acc_t* o_t = s.o_t.data();  // o^T[c, i] = Σ_j v[j, c]·P^T[j, i], normalised below
    const acc_t* v = s.rows(s.v, h);
    for (int64_t c = 0; c < d; ++c) {
      for (int64_t i = 0; i < L; ++i) o_t[c * L + i] = 0;
      cpu::accumulate_rows(v + c, d, p_t, L, N, o_t + c * L, L);
    }
    for (int64_t i = 0; i < N; ++i) {
      const int64_t pixel = b * HW + s.pixel[i];
      const acc_t inv = acc_t(1) / sum[i];
      scalar_t* out_i = out + out_offset(pixel, h, op.heads, d);
      for (int64_t c = 0; c < d; ++c) out_i[c] = static_cast<scalar_t>(o_t[c * L + i] * inv);
      lse[pixel * op.heads + h] = max[i] + std::log(sum[i]);
    }
  }
}

template <typename scalar_t, typename acc_t>
ATTNKERN_CPU_CLONES void backward_window(const Operands<scalar_t, acc_t>& op, int64_t b, int64_t w, Scratch<acc_t>& s,
                                         const scalar_t* grad, const scalar_t* out, const acc_t* lse, scalar_t* grad_qkv,
                                         acc_t* grad_bias_t /* [heads, N, N] of this task's group, or null */) {
  const int64_t N = s.N, L = s.L, d = op.d, heads = op.heads, HW = op.grid.H * op.grid.W;
  const bool has_offset = locate_window(op, w, s);
  gather_window(op, op.qkv + b * op.sample_stride(), s);
  for (int64_t h = 0; h < heads; ++h) {  // dO, lse and D_i = Σ_c dO_ic·o_ic per head, padding zeroed
    acc_t* lse_h = s.lanes(s.lse, h);
    acc_t* delta = s.lanes(s.delta, h);
    acc_t* grad_o_t = s.columns(s.grad_o_t, h);
    for (int64_t i = 0; i < L; ++i) lse_h[i] = delta[i] = 0;
    for (int64_t c = 0; c < d; ++c) {
      for (int64_t i = N; i < L; ++i) grad_o_t[c * L + i] = 0;
    }
  }
  for (int64_t i = 0; i < N; ++i) {
    const int64_t pixel = b * HW + s.pixel[i];
    for (int64_t h = 0; h < heads; ++h) {
      const scalar_t* g = grad + out_offset(pixel, h, heads, d);
      const scalar_t* o = out + out_offset(pixel, h, heads, d);
      acc_t* grad_o = s.rows(s.grad_o, h) + i * d;
      acc_t* grad_o_t = s.columns(s.grad_o_t, h) + i;
      acc_t sum = 0;
      for (int64_t c = 0; c < d; ++c) {
        grad_o[c] = grad_o_t[c * L] = static_cast<acc_t>(g[c]);
        sum += grad_o[c] * static_cast<acc_t>(o[c]);
      }
      s.lanes(s.delta, h)[i] = sum;
      s.lanes(s.lse, h)[i] = lse[pixel * heads + h];
    }
  }
  for (int64_t h = 0; h < heads; ++h) {
    const acc_t* k = s.rows(s.k, h);
    const acc_t* v = s.rows(s.v, h);
    const acc_t* lse_h = s.lanes(s.lse, h);
    const acc_t* delta = s.lanes(s.delta, h);
    acc_t* p_t = s.tile.data();
    logits_t(op, h, has_offset, s, p_t);
    acc_t* ds_t = s.tile2.data();  // dP^T[j, i] = v_j·dO_i, then dS^T in place
    for (int64_t j = 0; j < N; ++j) {
      acc_t* p_row = p_t + j * L;
      acc_t* ds_row = ds_t + j * L;
      for (int64_t i = 0; i < L; i += cpu::kLanes) {
        cpu::store(p_row + i, cpu::exp(cpu::load(p_row + i) - cpu::load(lse_h + i)));
        cpu::store(ds_row + i, cpu::Block<acc_t>{});
      }
      cpu::accumulate_rows(v + j * d, 1, s.columns(s.grad_o_t, h), L, d, ds_row, L);
      for (int64_t i = 0; i < L; ++i) ds_row[i] = logit_grad(p_row[i], ds_row[i], delta[i]);
      if (grad_bias_t != nullptr) {
        acc_t* bias_row = grad_bias_t + (h * N + j) * N;
        for (int64_t i = 0; i < N; ++i) bias_row[i] += ds_row[i];
      }
    }
    acc_t* dq_t = s.columns(s.dq_t, h);  // dq^T[c, i] = Σ_j k[j, c]·dS^T[j, i]  (times scale when written)
    for (int64_t c = 0; c < d; ++c) {
      for (int64_t i = 0; i < L; ++i) dq_t[c * L + i] = 0;
      cpu::accumulate_rows(k + c, d, ds_t, L, N, dq_t + c * L, L);
    }
    // The key side runs along j: P and dS untransposed, [N queries, L keys].
    acc_t* p = s.tile3.data();
    cpu::transpose(p_t, N, N, L, p, L);
    acc_t* ds = p_t;
    cpu::transpose(ds_t, N, N, L, ds, L);
    acc_t* dk_t = s.columns(s.dk_t, h);  // dk^T[c, j] = Σ_i q[i, c]·dS[i, j]  (q is scaled)
    acc_t* dv_t = s.columns(s.dv_t, h);  // dv^T[c, j] = Σ_i dO[i, c]·P[i, j]
    for (int64_t c = 0; c < d; ++c) {
      for (int64_t j = 0; j < L; ++j) dk_t[c * L + j] = dv_t[c * L + j] = 0;
      cpu::accumulate_rows(s.rows(s.q, h) + c, d, ds, L, N, dk_t + c * L, L);
      cpu::accumulate_rows(s.rows(s.grad_o, h) + c, d, p, L, N, dv_t + c * L, L);
    }
  }
  scalar_t* grad_b = grad_qkv + b * op.sample_stride();
  for (int64_t t = 0; t < N; ++t) {  // each pixel's [3, heads, d] gradient row, in order
    scalar_t* dst = grad_b + qkv_offset(s.pixel[t], 0, 0, heads, d);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t c = 0; c < d; ++c) dst[h * d + c] = static_cast<scalar_t>(op.scale * s.columns(s.dq_t, h)[c * L + t]);
    }
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t c = 0; c < d; ++c) dst[(heads + h) * d + c] = static_cast<scalar_t>(s.columns(s.dk_t, h)[c * L + t]);
    }
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t c = 0; c < d; ++c) dst[(2 * heads + h) * d + c] = static_cast<scalar_t>(s.columns(s.dv_t, h)[c * L + t]);
    }
  }
}

// Bias and mask as the tasks read them: transposed tiles in the accumulation type.
at::Tensor transposed_tiles(const at::Tensor& t, at::ScalarType acc_type) {
  return t.defined() ? t.transpose(1, 2).to(acc_type).contiguous() : at::Tensor();
}

template <typename scalar_t, typename acc_t>
Operands<scalar_t, acc_t> operands(const WindowGrid& grid, const at::Tensor& qkv, const at::Tensor& bias_t,
                                   const at::Tensor& mask_t, double scale) {
  return {grid,
          qkv.size(4),
          qkv.size(5),
          static_cast<acc_t>(scale),
          qkv.const_data_ptr<scalar_t>(),
          bias_t.defined() ? bias_t.const_data_ptr<acc_t>() : nullptr,
          mask_t.defined() ? mask_t.const_data_ptr<acc_t>() : nullptr};
}

std::tuple<at::Tensor, at::Tensor> window_attention_cpu(const at::Tensor& qkv_in, const c10::optional<at::Tensor>& bias,
                                                        const c10::optional<at::Tensor>& mask, int64_t window_size,
                                                        int64_t shift_size, double scale) {
  const WindowGrid grid = check_inputs(qkv_in, bias, mask, window_size, shift_size, "window_attention");
  auto qkv = qkv_in.contiguous();
  const auto acc_type = at::toOpMathType(qkv.scalar_type());
  auto bias_t = transposed_tiles(bias_operand(bias), acc_type), mask_t = transposed_tiles(mask_operand(mask, qkv), acc_type);
  const int64_t B = qkv.size(0), heads = qkv.size(4), d = qkv.size(5), N = grid.tokens(), nW = grid.windows();
  auto out = at::empty({B, grid.H, grid.W, heads, d}, qkv.options());
  auto lse = at::empty({B, grid.H, grid.W, heads}, qkv.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto op = operands<scalar_t, acc_t>(grid, qkv, bias_t, mask_t, scale);
    at::parallel_for(0, B * nW, 1, [&](int64_t t0, int64_t t1) {
      Scratch<acc_t> scratch(N, d, heads);
      for (int64_t window = t0; window < t1; ++window) {
        forward_window(op, window / nW, window % nW, scratch, out.mutable_data_ptr<scalar_t>(),
                       lse.mutable_data_ptr<acc_t>());
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> window_attention_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& qkv_in, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& mask, const at::Tensor& out_in, const at::Tensor& lse_in, int64_t window_size,
    int64_t shift_size, double scale) {
  const char* name = "window_attention_backward";
  const WindowGrid grid = check_inputs(qkv_in, bias, mask, window_size, shift_size, name);
  check_saved(grad_in, qkv_in, out_in, lse_in, name);
  auto qkv = qkv_in.contiguous(), grad = grad_in.contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  const auto acc_type = at::toOpMathType(qkv.scalar_type());
  auto bias_t = transposed_tiles(bias_operand(bias), acc_type), mask_t = transposed_tiles(mask_operand(mask, qkv), acc_type);
  const int64_t B = qkv.size(0), heads = qkv.size(4), d = qkv.size(5), N = grid.tokens(), nW = grid.windows();
  const int64_t groups = backward_groups(B * nW);
  auto grad_qkv = at::empty_like(qkv);
  // Partial bias gradients, transposed like bias_t: one per (group, head), summed in a fixed order.
  auto grad_bias_t = bias_t.defined() ? at::zeros({groups, heads, N, N}, qkv.options().dtype(acc_type)) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "window_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto op = operands<scalar_t, acc_t>(grid, qkv, bias_t, mask_t, scale);
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      Scratch<acc_t> scratch(N, d, heads);
      for (int64_t group = g0; group < g1; ++group) {
        acc_t* partial = grad_bias_t.defined() ? grad_bias_t.mutable_data_ptr<acc_t>() + group * heads * N * N : nullptr;
        for (int64_t window = group; window < B * nW; window += groups) {
          backward_window(op, window / nW, window % nW, scratch, grad.const_data_ptr<scalar_t>(),
                          out.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(),
                          grad_qkv.mutable_data_ptr<scalar_t>(), partial);
        }
      }
    });
  });
  auto grad_bias = grad_bias_t.defined() ? grad_bias_t.sum(0).transpose(1, 2).to(bias->scalar_type()).contiguous()
                                         : at::empty({0}, qkv.options());
  return {grad_qkv, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CPU, m) {
  m.impl("window_attention", &window_attention_cpu);
  m.impl("window_attention_backward", &window_attention_backward_cpu);
}

}  // namespace window_attention
}  // namespace attnkern
