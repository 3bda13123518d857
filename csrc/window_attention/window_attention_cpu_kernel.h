// The window-attention CPU kernels, compiled once per CPU capability (cpu_foreach_capability.h: no
// includes here, everything lives in namespace ATTNKERN_CPU_NAMESPACE). window_attention_cpu.cpp runs
// them over ranges of windows on its threads.
//
// A task handles one window at a time, all heads: it gathers the window's q, k, v through the index
// maps of window_attention.h (no partition, no roll), works on N×N tiles that stay in cache, and
// writes its tokens' results back to image layout. Every product is a small matrix product in
// register tiles (vec::product), vectorised along the keys (logits) or along the channels (outputs
// and gradients); the softmax runs along the rows of the logits tile. Per head, in tiles of N rows
// (queries) by Lp columns (keys, padded to whole vectors; the padding holds −inf logits, so zero
// probabilities), with channel rows padded to dp:
//   S = bias + offset + (scale·Q)·Kᵀ,   P = exp(S − m_i) / l_i,   O = P·V                 (forward)
//   P = exp(S − lse_i),  dP = dO·Vᵀ,  dS = P ⊙ (dP − D_i) (logit_grad, a vector at a time),
//   dQ = scale·dS·K,  dK = dSᵀ·(scale·Q),  dV = Pᵀ·dO,  dbias += dS                      (backward)

namespace attnkern {
namespace window_attention {
namespace ATTNKERN_CPU_NAMESPACE {

namespace vec = ::attnkern::ATTNKERN_CPU_NAMESPACE::vec;

// One task's buffers. Operand layouts: rows [N, dp] (a token's channels, zero beyond d) and transposed
// [d, Lp] (a channel's tokens, zero beyond N); per-head buffers hold heads of them back to back.
template <typename acc_t>
struct WindowTiles {
  int64_t N, Lp, d, dp, heads;
  std::vector<int64_t> pixel;  // [N]: each token's pixel in the image
  std::vector<int> region;     // [N]: each token's region of a shifted window
  std::vector<acc_t> bias;     // [heads, N, Lp]: bias rows, −inf in the padding
  std::vector<acc_t> offset;   // [N, Lp]: the window's region mask + explicit mask, shared by its heads
  std::vector<acc_t> q, k, v, grad_o;  // per head, rows (q scaled)
  std::vector<acc_t> k_t, v_t;         // per head, transposed
  std::vector<acc_t> logits, grad_logits;  // [N, Lp]
  std::vector<acc_t> o, dq, dk, dv;        // rows
  std::vector<acc_t> row_max, row_sum;     // [N]: the forward's softmax statistics of one head
  std::vector<acc_t> lse, delta;           // per head [N]: the backward's lse_i and D_i = dO_i·o_i

  template <typename scalar_t>
  WindowTiles(const Operands<scalar_t, acc_t>& op, bool backward)
      : N(op.grid.tokens()),
        Lp(vec::padded<acc_t>(N)),
        d(op.d),
        dp(vec::padded<acc_t>(op.d)),
        heads(op.heads),
        pixel(N),
        region(N),
        bias(heads * N * Lp),
        offset(N * Lp),
        q(heads * N * dp),
        k(backward ? heads * N * dp : 0),
        v(backward ? 0 : heads * N * dp),
        grad_o(backward ? heads * N * dp : 0),
        k_t(heads * d * Lp),
        v_t(backward ? heads * d * Lp : 0),
        logits(N * Lp),
        grad_logits(backward ? N * Lp : 0),
        o(backward ? 0 : N * dp),
        dq(backward ? heads * N * dp : 0),
        dk(backward ? heads * N * dp : 0),
        dv(backward ? heads * N * dp : 0),
        row_max(backward ? 0 : N),
        row_sum(backward ? 0 : N),
        lse(backward ? heads * N : 0),
        delta(backward ? heads * N : 0) {
    for (int64_t h = 0; h < heads; ++h) {
      const scalar_t* bias_h = op.bias != nullptr ? op.bias + h * N * N : nullptr;
      for (int64_t i = 0; i < N; ++i) {
        acc_t* row = bias.data() + (h * N + i) * Lp;
        for (int64_t j = 0; j < N; ++j) {
          row[j] = logit_offset<acc_t, scalar_t, acc_t>(bias_h, nullptr, nullptr, i, j, N);
        }
        for (int64_t j = N; j < Lp; ++j) row[j] = -std::numeric_limits<acc_t>::infinity();
      }
    }
  }

  acc_t* rows(std::vector<acc_t>& buffer, int64_t h) { return buffer.data() + h * N * dp; }
  acc_t* columns(std::vector<acc_t>& buffer, int64_t h) { return buffer.data() + h * d * Lp; }
};

// Window w's tokens (pixels and regions, row by row: no divisions per token) and, when it has one,
// the offset every head adds to its logits: SwinIR's region mask and the explicit mask, composed by
// logit_offset of window_attention.h as in the CUDA kernels (the bias, per head, goes through
// logit_offset once per task in WindowTiles, and logits() adds the two).
// Returns whether the window has an offset.
template <typename scalar_t, typename acc_t>
bool locate_window(const Operands<scalar_t, acc_t>& op, int64_t w, WindowTiles<acc_t>& s) {
  const WindowGrid& grid = op.grid;
  const int64_t N = s.N, Lp = s.Lp, windows_x = grid.W / grid.window;
  const int64_t y0 = (w / windows_x) * grid.window, x0 = (w % windows_x) * grid.window;
  for (int64_t ty = 0, t = 0; ty < grid.window; ++ty) {
    for (int64_t tx = 0; tx < grid.window; ++tx, ++t) {
      s.pixel[t] = grid.pixel_at(y0 + ty, x0 + tx);
      s.region[t] = grid.shift > 0 ? grid.region_at(y0 + ty, x0 + tx) : 0;
    }
  }
  if (grid.shift == 0 && op.mask == nullptr) return false;
  const acc_t* mask = op.mask != nullptr ? op.mask + w * N * N : nullptr;
  const int* region = grid.shift > 0 ? s.region.data() : nullptr;
  for (int64_t i = 0; i < N; ++i) {
    acc_t* row = s.offset.data() + i * Lp;
    for (int64_t j = 0; j < N; ++j) row[j] = logit_offset<acc_t, acc_t, acc_t>(nullptr, mask, region, i, j, N);
    for (int64_t j = N; j < Lp; ++j) row[j] = 0;
  }
  return true;
}

// Gathers every head of the located window of one sample, reading each pixel's [3, heads, d] row once:
// scale·q and (backward) k as rows, k (and v, backward) transposed, v (forward) as rows.
template <typename scalar_t, typename acc_t>
void gather_window(const Operands<scalar_t, acc_t>& op, const scalar_t* qkv_b, bool backward, WindowTiles<acc_t>& s) {
  const int64_t d = s.d, heads = s.heads, Lp = s.Lp, dp = s.dp;
  for (int64_t t = 0; t < s.N; ++t) {
    const scalar_t* src = qkv_b + qkv_offset(s.pixel[t], 0, 0, heads, d);
    for (int64_t h = 0; h < heads; ++h) {
      const scalar_t* q_src = src + h * d;
      const scalar_t* k_src = src + (heads + h) * d;
      const scalar_t* v_src = src + (2 * heads + h) * d;
      acc_t* q = s.rows(s.q, h) + t * dp;
      acc_t* k_t = s.columns(s.k_t, h) + t;
      for (int64_t c = 0; c < d; ++c) q[c] = op.scale * static_cast<acc_t>(q_src[c]);
      for (int64_t c = 0; c < d; ++c) k_t[c * Lp] = static_cast<acc_t>(k_src[c]);
      if (backward) {
        acc_t* k = s.rows(s.k, h) + t * dp;
        acc_t* v_t = s.columns(s.v_t, h) + t;
        for (int64_t c = 0; c < d; ++c) k[c] = static_cast<acc_t>(k_src[c]);
        for (int64_t c = 0; c < d; ++c) v_t[c * Lp] = static_cast<acc_t>(v_src[c]);
      } else {
        acc_t* v = s.rows(s.v, h) + t * dp;
        for (int64_t c = 0; c < d; ++c) v[c] = static_cast<acc_t>(v_src[c]);
      }
    }
  }
}

// Asks for part `part` of `parts` of window `window`'s [3, heads, d] pixel rows to be brought into L2,
// ahead of its gather_window: spread over the previous window's heads, the reads overlap its arithmetic
// (qkv is far larger than the caches, and the gather would otherwise wait on memory).
template <typename scalar_t, typename acc_t>
void prefetch_window(const Operands<scalar_t, acc_t>& op, int64_t window, int64_t part, int64_t parts) {
  const WindowGrid& grid = op.grid;
  const int64_t nW = grid.windows(), b = window / nW, w = window % nW, windows_x = grid.W / grid.window;
  const int64_t y0 = (w / windows_x) * grid.window, x0 = (w % windows_x) * grid.window, N = grid.tokens();
  const int64_t row_bytes = 3 * op.heads * op.d * static_cast<int64_t>(sizeof(scalar_t));
  const char* sample = reinterpret_cast<const char*>(op.qkv + b * op.sample_stride());
  for (int64_t t = part * N / parts; t < (part + 1) * N / parts; ++t) {
    const char* row = sample + grid.pixel_at(y0 + t / grid.window, x0 + t % grid.window) * row_bytes;
    for (int64_t byte = 0; byte < row_bytes; byte += 64) __builtin_prefetch(row + byte, 0, 2);
  }
}

// S = bias_h + offset + (scale·Q)·Kᵀ of head h, into s.logits.
template <typename acc_t>
void logits(int64_t h, bool has_offset, WindowTiles<acc_t>& s) {
  const int64_t N = s.N, Lp = s.Lp;
  acc_t* out = s.logits.data();
  const acc_t* bias = s.bias.data() + h * N * Lp;
  for (int64_t e = 0; e < N * Lp; e += vec::kLanes<acc_t>) {
    vec::Vec<acc_t> x = vec::load(bias + e);
    if (has_offset) x += vec::load(s.offset.data() + e);
    vec::store(out + e, x);
  }
  vec::product(s.rows(s.q, h), s.dp, 1, s.columns(s.k_t, h), Lp, s.d, out, Lp, N, Lp / vec::kLanes<acc_t>, true);
}

template <typename scalar_t, typename acc_t>
void forward_windows(const Operands<scalar_t, acc_t>& op, int64_t begin, int64_t end, scalar_t* out, acc_t* lse) {
  WindowTiles<acc_t> s(op, /*backward=*/false);
  const int64_t N = s.N, Lp = s.Lp, d = s.d, dp = s.dp, heads = s.heads, nW = op.grid.windows();
  const int64_t HW = op.grid.H * op.grid.W;
  for (int64_t window = begin; window < end; ++window) {
    const int64_t b = window / nW;
    const bool has_offset = locate_window(op, window % nW, s);
    gather_window(op, op.qkv + b * op.sample_stride(), /*backward=*/false, s);
    for (int64_t h = 0; h < heads; ++h) {
      if (window + 1 < end) prefetch_window(op, window + 1, h, heads);
      logits(h, has_offset, s);
      acc_t* p = s.logits.data();
      for (int64_t i = 0; i < N; ++i) {  // softmax along the keys of each row, unnormalised
        acc_t* row = p + i * Lp;
        vec::Vec<acc_t> m = vec::load(row);
        for (int64_t j = vec::kLanes<acc_t>; j < Lp; j += vec::kLanes<acc_t>) m = vec::maximum(m, vec::load(row + j));
        const vec::Vec<acc_t> max = vec::broadcast(vec::reduce_max<acc_t>(m));
        vec::Vec<acc_t> total{};
        for (int64_t j = 0; j < Lp; j += vec::kLanes<acc_t>) {
          const vec::Vec<acc_t> e = vec::exp(vec::load(row + j) - max);
          vec::store(row + j, e);
          total += e;
        }
        s.row_max[i] = max[0];
        s.row_sum[i] = vec::reduce_sum<acc_t>(total);
      }
      vec::product(p, Lp, 1, s.rows(s.v, h), dp, N, s.o.data(), dp, N, dp / vec::kLanes<acc_t>, false);
      for (int64_t i = 0; i < N; ++i) {
        const int64_t pixel = b * HW + s.pixel[i];
        const acc_t inv = acc_t(1) / s.row_sum[i];
        const acc_t* o = s.o.data() + i * dp;
        scalar_t* out_i = out + out_offset(pixel, h, heads, d);
        for (int64_t c = 0; c < d; ++c) out_i[c] = static_cast<scalar_t>(o[c] * inv);
        lse[pixel * heads + h] = s.row_max[i] + std::log(s.row_sum[i]);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
void backward_windows(const Operands<scalar_t, acc_t>& op, int64_t group, int64_t groups, const scalar_t* grad,
                      const scalar_t* out, const acc_t* lse, scalar_t* grad_qkv,
                      acc_t* grad_bias /* [heads, N, N] of this group, or null */) {
  WindowTiles<acc_t> s(op, /*backward=*/true);
  const int64_t N = s.N, Lp = s.Lp, d = s.d, dp = s.dp, heads = s.heads, nW = op.grid.windows();
  const int64_t HW = op.grid.H * op.grid.W, L = vec::kLanes<acc_t>;
  for (int64_t window = group; window < op.batch * nW; window += groups) {
    const int64_t b = window / nW;
    const bool has_offset = locate_window(op, window % nW, s);
    gather_window(op, op.qkv + b * op.sample_stride(), /*backward=*/true, s);
    for (int64_t i = 0; i < N; ++i) {  // dO as rows, lse and D_i = dO_i·o_i, per head
      const int64_t pixel = b * HW + s.pixel[i];
      for (int64_t h = 0; h < heads; ++h) {
        const scalar_t* g = grad + out_offset(pixel, h, heads, d);
        const scalar_t* o = out + out_offset(pixel, h, heads, d);
        acc_t* grad_o = s.rows(s.grad_o, h) + i * dp;
        acc_t dot = 0;
        for (int64_t c = 0; c < d; ++c) {
          grad_o[c] = static_cast<acc_t>(g[c]);
          dot += grad_o[c] * static_cast<acc_t>(o[c]);
        }
        s.delta[h * N + i] = dot;
        s.lse[h * N + i] = lse[pixel * heads + h];
      }
    }
    for (int64_t h = 0; h < heads; ++h) {
      if (window + groups < op.batch * nW) prefetch_window(op, window + groups, h, heads);
      logits(h, has_offset, s);
      acc_t* p = s.logits.data();
      acc_t* ds = s.grad_logits.data();
      vec::product(s.rows(s.grad_o, h), dp, 1, s.columns(s.v_t, h), Lp, d, ds, Lp, N, Lp / L, false);  // dP
      for (int64_t i = 0; i < N; ++i) {  // P = exp(S − lse_i), dS = P ⊙ (dP − D_i)
        acc_t* p_row = p + i * Lp;
        acc_t* ds_row = ds + i * Lp;
        const vec::Vec<acc_t> lse_i = vec::broadcast(s.lse[h * N + i]), delta_i = vec::broadcast(s.delta[h * N + i]);
        for (int64_t j = 0; j < Lp; j += L) {
          const vec::Vec<acc_t> prob = vec::exp(vec::load(p_row + j) - lse_i);
          vec::store(p_row + j, prob);
          vec::Vec<acc_t> grad;
          logit_grad(grad, prob, vec::load(ds_row + j), delta_i);
          vec::store(ds_row + j, grad);
        }
        if (grad_bias != nullptr) {
          acc_t* bias_row = grad_bias + (h * N + i) * N;
          for (int64_t j = 0; j < N; ++j) bias_row[j] += ds_row[j];
        }
      }
      vec::product(ds, Lp, 1, s.rows(s.k, h), dp, N, s.rows(s.dq, h), dp, N, dp / L, false);   // dS·K
      vec::product(ds, 1, Lp, s.rows(s.q, h), dp, N, s.rows(s.dk, h), dp, N, dp / L, false);   // dSᵀ·(scale·Q)
      vec::product(p, 1, Lp, s.rows(s.grad_o, h), dp, N, s.rows(s.dv, h), dp, N, dp / L, false);  // Pᵀ·dO
    }
    scalar_t* grad_b = grad_qkv + b * op.sample_stride();
    for (int64_t t = 0; t < N; ++t) {  // each pixel's [3, heads, d] gradient row, in order
      scalar_t* dst = grad_b + qkv_offset(s.pixel[t], 0, 0, heads, d);
      for (int64_t h = 0; h < heads; ++h) {
        const acc_t* dq = s.rows(s.dq, h) + t * dp;
        for (int64_t c = 0; c < d; ++c) dst[h * d + c] = static_cast<scalar_t>(op.scale * dq[c]);
      }
      for (int64_t h = 0; h < heads; ++h) {
        const acc_t* dk = s.rows(s.dk, h) + t * dp;
        for (int64_t c = 0; c < d; ++c) dst[(heads + h) * d + c] = static_cast<scalar_t>(dk[c]);
      }
      for (int64_t h = 0; h < heads; ++h) {
        const acc_t* dv = s.rows(s.dv, h) + t * dp;
        for (int64_t c = 0; c < d; ++c) dst[(2 * heads + h) * d + c] = static_cast<scalar_t>(dv[c]);
      }
    }
  }
}

}  // namespace ATTNKERN_CPU_NAMESPACE
}  // namespace window_attention
}  // namespace attnkern
