// The gating CPU kernels, compiled once per CPU capability (cpu_foreach_capability.h: no includes
// here, everything lives in namespace ATTNKERN_CPU_NAMESPACE; gating_cpu.cpp includes <vector>).
// gating_cpu.cpp runs them over ranges of rows (one channel plane of HW positions each), of pixel blocks
// or of (sample, group) pairs on its threads.
//
// Reductions along a plane run over one vector's worth of independent accumulators (a fixed-size
// inner loop the compiler turns into one vector, without reassociating a single sum); reductions
// across channels walk the planes of a block of kPixelBlock pixels with per-pixel accumulators, so
// every inner loop is contiguous. Every reduction has a fixed order (for a given capability).

namespace attnkern {
namespace gating {
namespace ATTNKERN_CPU_NAMESPACE {

namespace vec = ::attnkern::ATTNKERN_CPU_NAMESPACE::vec;

// Σ_{j<n} term(j) over one vector of accumulators; term may write elements as a side effect.
template <typename acc_t, typename Term>
ATTNKERN_ALWAYS_INLINE acc_t lane_sum(int64_t n, Term term) {
  constexpr int64_t lanes = vec::kLanes<acc_t>;
  acc_t partial[lanes] = {};
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    for (int64_t k = 0; k < lanes; ++k) partial[k] += term(j + k);
  }
  acc_t sum = 0;
  for (; j < n; ++j) sum += term(j);
  for (int64_t k = 0; k < lanes; ++k) sum += partial[k];
  return sum;
}

// ---- channel_pool backward: rows [r0, r1) of x viewed as [B·C, HW] ------------------------------

template <typename scalar_t>
void channel_pool_backward_rows(const ChannelPoolGrad<scalar_t>& a, int64_t r0, int64_t r1) {
  using acc_t = Acc<scalar_t>;
  const int64_t HW = a.HW;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* row = a.x + r * HW;
    scalar_t* out = a.grad_x + r * HW;
    const acc_t mean_share = a.grad_mean ? static_cast<acc_t>(a.grad_mean[r]) / static_cast<acc_t>(HW) : acc_t(0);
    if (a.grad_max == nullptr) {
      for (int64_t j = 0; j < HW; ++j) out[j] = static_cast<scalar_t>(mean_share);
      continue;
    }
    const acc_t mx = static_cast<acc_t>(a.max[r]);
    const acc_t ties = lane_sum<acc_t>(HW, [&](int64_t j) { return acc_t(static_cast<acc_t>(row[j]) == mx); });
    const acc_t share = max_share(static_cast<acc_t>(a.grad_max[r]), static_cast<int64_t>(ties));
    for (int64_t j = 0; j < HW; ++j) {
      out[j] = static_cast<scalar_t>(pool_gradient(mean_share, share, static_cast<acc_t>(row[j]) == mx));
    }
  }
}

// ---- spatial_pool: tasks [t0, t1) of (sample, block of kPixelBlock pixels) ------------------------

// fn(b, block, first pixel, pixels) for each task.
template <typename Fn>
ATTNKERN_ALWAYS_INLINE void for_pixel_blocks(int64_t HW, int64_t t0, int64_t t1, Fn fn) {
  const int64_t blocks = pixel_blocks(HW);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / blocks, block = t % blocks, p0 = block * kPixelBlock;
    fn(b, block, p0, HW - p0 < kPixelBlock ? HW - p0 : kPixelBlock);
  }
}

template <typename scalar_t>
void spatial_pool_blocks(const SpatialPool<scalar_t>& a, int64_t t0, int64_t t1) {
  using acc_t = Acc<scalar_t>;
  const int64_t C = a.C, HW = a.HW;
  for_pixel_blocks(HW, t0, t1, [&](int64_t b, int64_t, int64_t p0, int64_t n) {
    acc_t sum[kPixelBlock], mx[kPixelBlock];
    for (int64_t j = 0; j < n; ++j) {
      sum[j] = 0;
      mx[j] = -std::numeric_limits<acc_t>::infinity();
    }
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* row = a.x + (b * C + c) * HW + p0;
      const acc_t g = a.gate ? static_cast<acc_t>(a.gate[b * C + c]) : acc_t(1);
      for (int64_t j = 0; j < n; ++j) {
        const acc_t y = gated(row[j], g);
        sum[j] += y;
        mx[j] = y > mx[j] ? y : mx[j];
      }
    }
    scalar_t* mean_out = a.pooled + b * 2 * HW + p0;
    scalar_t* max_out = mean_out + HW;
    for (int64_t j = 0; j < n; ++j) {
      if (std::isnan(sum[j])) {  // rescan this pixel, NaN winning
        mx[j] = -std::numeric_limits<acc_t>::infinity();
        for (int64_t c = 0; c < C; ++c) {
          const acc_t g = a.gate ? static_cast<acc_t>(a.gate[b * C + c]) : acc_t(1);
          mx[j] = nan_max(gated(a.x[(b * C + c) * HW + p0 + j], g), mx[j]);
        }
      }
      mean_out[j] = static_cast<scalar_t>(sum[j] / static_cast<acc_t>(C));
      max_out[j] = static_cast<scalar_t>(mx[j]);
    }
  });
}

// The gate's gradient is left per (sample, block, channel) in a.gate_partial, summed by the caller.
template <typename scalar_t>
void spatial_pool_backward_blocks(const SpatialPoolGrad<scalar_t>& a, int64_t t0, int64_t t1) {
  using acc_t = Acc<scalar_t>;
  const int64_t C = a.C, HW = a.HW, blocks = pixel_blocks(HW);
  for_pixel_blocks(HW, t0, t1, [&](int64_t b, int64_t block, int64_t p0, int64_t n) {
    acc_t mx[kPixelBlock], ties[kPixelBlock], mean_share[kPixelBlock], share[kPixelBlock];
    const scalar_t* grad_mean = a.grad + b * 2 * HW + p0;
    const scalar_t* max_in = a.pooled + b * 2 * HW + HW + p0;
    for (int64_t j = 0; j < n; ++j) {
      mx[j] = static_cast<acc_t>(max_in[j]);
      ties[j] = 0;
      mean_share[j] = static_cast<acc_t>(grad_mean[j]) / static_cast<acc_t>(C);
    }
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* row = a.x + (b * C + c) * HW + p0;
      const acc_t g = a.gate ? static_cast<acc_t>(a.gate[b * C + c]) : acc_t(1);
      for (int64_t j = 0; j < n; ++j) ties[j] += acc_t(gated(row[j], g) == mx[j]);
    }
    for (int64_t j = 0; j < n; ++j) {
      share[j] = max_share(static_cast<acc_t>(grad_mean[HW + j]), static_cast<int64_t>(ties[j]));
    }
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* row = a.x + (b * C + c) * HW + p0;
      scalar_t* out = a.grad_x + (b * C + c) * HW + p0;
      const acc_t g = a.gate ? static_cast<acc_t>(a.gate[b * C + c]) : acc_t(1);
      const acc_t gate_part = lane_sum<acc_t>(n, [&](int64_t j) {
        const acc_t w = pool_gradient(mean_share[j], share[j], gated(row[j], g) == mx[j]);
        out[j] = static_cast<scalar_t>(g * w);
        return static_cast<acc_t>(row[j]) * w;
      });
      if (a.gate_partial) a.gate_partial[(b * blocks + block) * C + c] = gate_part;
    }
  });
}

// ---- apply_gates ---------------------------------------------------------------------------------

// Forward, rows [r0, r1) of [B·C, HW].
template <typename scalar_t>
void apply_gates_rows(const Gates<scalar_t>& a, int64_t r0, int64_t r1) {
  using acc_t = Acc<scalar_t>;
  const int64_t C = a.C, HW = a.HW;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* row = a.x + r * HW;
    scalar_t* o = a.out + r * HW;
    const acc_t g = a.channel_gate ? static_cast<acc_t>(a.channel_gate[r]) : acc_t(1);
    if (a.pixel_gate == nullptr) {
      for (int64_t j = 0; j < HW; ++j) o[j] = static_cast<scalar_t>(static_cast<acc_t>(row[j]) * g);
    } else {
      const scalar_t* p = a.pixel_gate + (r / C) * HW;
      for (int64_t j = 0; j < HW; ++j) {
        o[j] = static_cast<scalar_t>(static_cast<acc_t>(row[j]) * g * static_cast<acc_t>(p[j]));
      }
    }
  }
}

// Backward with a channel gate only (SE), rows [r0, r1): one pass per plane, its dot product alongside.
template <typename scalar_t>
void apply_channel_gate_backward_rows(const GatesGrad<scalar_t>& a, int64_t r0, int64_t r1) {
  using acc_t = Acc<scalar_t>;
  const int64_t HW = a.HW;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* row = a.x + r * HW;
    const scalar_t* dy = a.grad + r * HW;
    scalar_t* out = a.grad_x + r * HW;
    const acc_t g = static_cast<acc_t>(a.channel_gate[r]);
    a.grad_channel_gate[r] = static_cast<scalar_t>(lane_sum<acc_t>(HW, [&](int64_t j) {
      const acc_t dyj = static_cast<acc_t>(dy[j]);
      out[j] = static_cast<scalar_t>(dyj * g);
      return dyj * static_cast<acc_t>(row[j]);
    }));
  }
}

// Backward with a pixel gate, tasks [t0, t1) of (sample, pixel block): the pixel gate's gradient
// accumulates per pixel across the planes; the channel gate's (if any) is left per (sample, block,
// channel) in a.channel_partial, summed by the caller.
template <typename scalar_t>
void apply_gates_backward_blocks(const GatesGrad<scalar_t>& a, int64_t t0, int64_t t1) {
  using acc_t = Acc<scalar_t>;
  const int64_t C = a.C, HW = a.HW, blocks = pixel_blocks(HW);
  for_pixel_blocks(HW, t0, t1, [&](int64_t b, int64_t block, int64_t p0, int64_t n) {
    acc_t pixel_sum[kPixelBlock], pixel_gate[kPixelBlock];
    const scalar_t* p = a.pixel_gate + b * HW + p0;
    for (int64_t j = 0; j < n; ++j) {
      pixel_sum[j] = 0;
      pixel_gate[j] = static_cast<acc_t>(p[j]);
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t offset = (b * C + c) * HW + p0;
      const scalar_t* row = a.x + offset;
      const scalar_t* dy = a.grad + offset;
      scalar_t* out = a.grad_x + offset;
      const acc_t g = a.channel_gate ? static_cast<acc_t>(a.channel_gate[b * C + c]) : acc_t(1);
      const acc_t channel_part = lane_sum<acc_t>(n, [&](int64_t j) {
        const acc_t dyj = static_cast<acc_t>(dy[j]), xj = static_cast<acc_t>(row[j]);
        out[j] = static_cast<scalar_t>(dyj * g * pixel_gate[j]);
        pixel_sum[j] += dyj * xj * g;
        return dyj * xj * pixel_gate[j];
      });
      if (a.channel_partial) a.channel_partial[(b * blocks + block) * C + c] = channel_part;
    }
    for (int64_t j = 0; j < n; ++j) a.grad_pixel_gate[b * HW + p0 + j] = static_cast<scalar_t>(pixel_sum[j]);
  });
}

// ---- group_enhance: tasks [t0, t1) of the (sample, group) pairs (gating.h) ---------------------------

// mean[c] and s[p] of the group's [m, n] values x; returns the normalisation of s.
template <typename scalar_t>
GroupNorm<Acc<scalar_t>> group_similarity(const scalar_t* x, int64_t m, int64_t n, Acc<scalar_t>* mean,
                                          Acc<scalar_t>* s) {
  using acc_t = Acc<scalar_t>;
  for (int64_t p = 0; p < n; ++p) s[p] = 0;
  for (int64_t c = 0; c < m; ++c) {
    const scalar_t* row = x + c * n;
    mean[c] = lane_sum<acc_t>(n, [&](int64_t p) { return static_cast<acc_t>(row[p]); }) / static_cast<acc_t>(n);
    for (int64_t p = 0; p < n; ++p) s[p] += static_cast<acc_t>(row[p]) * mean[c];
  }
  const acc_t sum = lane_sum<acc_t>(n, [&](int64_t p) { return s[p]; });
  const acc_t mu = sum / static_cast<acc_t>(n);
  return GroupNorm<acc_t>::of(sum, lane_sum<acc_t>(n, [&](int64_t p) { return (s[p] - mu) * (s[p] - mu); }), n);
}

// gate[p] = sigmoid(w·c_hat[p] + b): a vector of lanes at a time (vec::exp), the rest one by one.
template <typename acc_t>
void affine_sigmoid(const acc_t* c_hat, int64_t n, acc_t w, acc_t b, acc_t* gate) {
  using Vec = vec::Vec<acc_t>;
  constexpr int64_t lanes = vec::kLanes<acc_t>;
  const Vec wv = vec::broadcast(w), bv = vec::broadcast(b), one = vec::broadcast(acc_t(1));
  int64_t p = 0;
  for (; p + lanes <= n; p += lanes) vec::store(gate + p, one / (one + vec::exp(-(wv * vec::load(c_hat + p) + bv))));
  for (; p < n; ++p) gate[p] = sigmoid(w * c_hat[p] + b);
}

// The group's ĉ (in s) and gates; returns the normalisation.
template <typename scalar_t>
GroupNorm<Acc<scalar_t>> group_gates(const scalar_t* x, int64_t m, int64_t n, Acc<scalar_t> w, Acc<scalar_t> b,
                                     Acc<scalar_t>* mean, Acc<scalar_t>* s, Acc<scalar_t>* gate) {
  const auto norm = group_similarity(x, m, n, mean, s);
  for (int64_t p = 0; p < n; ++p) s[p] = norm.normalised(s[p]);
  affine_sigmoid(s, n, w, b, gate);
  return norm;
}

template <typename scalar_t>
void group_enhance_groups(const GroupEnhance<scalar_t>& a, int64_t t0, int64_t t1) {
  using acc_t = Acc<scalar_t>;
  const int64_t m = a.m, n = a.n;
  std::vector<acc_t> buffer(m + 2 * n);
  acc_t *mean = buffer.data(), *s = mean + m, *gate = s + n;
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t g = task % a.G;
    const scalar_t* x = a.x + task * m * n;
    scalar_t* out = a.out + task * m * n;
    group_gates(x, m, n, static_cast<acc_t>(a.weight[g]), static_cast<acc_t>(a.bias[g]), mean, s, gate);
    for (int64_t c = 0; c < m; ++c) {
      const scalar_t* row = x + c * n;
      scalar_t* out_row = out + c * n;
      for (int64_t p = 0; p < n; ++p) out_row[p] = static_cast<scalar_t>(static_cast<acc_t>(row[p]) * gate[p]);
    }
  }
}

// Per (sample, group): Σ_p t·ĉ and Σ_p t into a.weight_partial and a.bias_partial (summed over the samples by
// the caller), and ∂x.
template <typename scalar_t>
void group_enhance_backward_groups(const GroupEnhanceGrad<scalar_t>& a, int64_t t0, int64_t t1) {
  using acc_t = Acc<scalar_t>;
  const int64_t m = a.m, n = a.n;
  std::vector<acc_t> buffer(2 * m + 3 * n);
  acc_t *mean = buffer.data(), *mean_grad = mean + m, *c_hat = mean_grad + m, *gate = c_hat + n, *t = gate + n;
  for (int64_t task = t0; task < t1; ++task) {
    const int64_t g = task % a.G;
    const scalar_t* x = a.x + task * m * n;
    const scalar_t* dy = a.grad + task * m * n;
    scalar_t* dx = a.grad_x + task * m * n;
    const acc_t w = static_cast<acc_t>(a.weight[g]);
    const auto norm = group_gates(x, m, n, w, static_cast<acc_t>(a.bias[g]), mean, c_hat, gate);
    for (int64_t p = 0; p < n; ++p) t[p] = 0;
    for (int64_t c = 0; c < m; ++c) {
      for (int64_t p = 0; p < n; ++p) t[p] += static_cast<acc_t>(dy[c * n + p]) * static_cast<acc_t>(x[c * n + p]);
    }
    for (int64_t p = 0; p < n; ++p) t[p] *= gate[p] * (acc_t(1) - gate[p]);
    const acc_t sum_t = lane_sum<acc_t>(n, [&](int64_t p) { return t[p]; });
    const acc_t sum_tc = lane_sum<acc_t>(n, [&](int64_t p) { return t[p] * c_hat[p]; });
    a.weight_partial[task] = sum_tc;
    a.bias_partial[task] = sum_t;
    const auto similarity_grad = SimilarityGrad<acc_t>::of(norm, w, sum_t, sum_tc, n);
    for (int64_t p = 0; p < n; ++p) t[p] = similarity_grad(t[p], c_hat[p]);  // ∂s
    for (int64_t c = 0; c < m; ++c) {
      const scalar_t* row = x + c * n;
      mean_grad[c] = lane_sum<acc_t>(n, [&](int64_t p) { return t[p] * static_cast<acc_t>(row[p]); }) /
                     static_cast<acc_t>(n);
    }
    for (int64_t c = 0; c < m; ++c) {
      const scalar_t* dy_row = dy + c * n;
      scalar_t* dx_row = dx + c * n;
      for (int64_t p = 0; p < n; ++p) {
        dx_row[p] = static_cast<scalar_t>(static_cast<acc_t>(dy_row[p]) * gate[p] + t[p] * mean[c] + mean_grad[c]);
      }
    }
  }
}

}  // namespace ATTNKERN_CPU_NAMESPACE
}  // namespace gating
}  // namespace attnkern
