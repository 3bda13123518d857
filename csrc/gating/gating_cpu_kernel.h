// The gating CPU kernels, compiled once per CPU capability (cpu_foreach_capability.h: no includes
// here, everything lives in namespace ATTNKERN_CPU_NAMESPACE). gating_cpu.cpp runs them over ranges
// of rows (one channel plane of HW positions each) or of pixel blocks on its threads.
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

}  // namespace ATTNKERN_CPU_NAMESPACE
}  // namespace gating
}  // namespace attnkern
