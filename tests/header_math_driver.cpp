// The family headers' math on the CPU, for tests/test_header_math.py: built by the host compiler with
// csrc/ alone on the include path (no ATen, no torch), run as `driver <command>`, it reads whitespace-
// separated numbers from stdin (integers as numbers too; "nan" and "inf" allowed) and prints its results,
// one number a line, in the order the test reads them. Each command runs the header functions the way the
// kernels compose them, in double precision; the test compares the results with attnkern.reference.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <utility>
#include <string>
#include <vector>

#include "covpool/covpool.h"
#include "criss_cross/criss_cross.h"
#include "gating/gating.h"
#include "region_conv/region_conv.h"
#include "window_attention/window_attention.h"

namespace {

using Vector = std::vector<double>;

double next_number() {
  std::string token;
  if (!(std::cin >> token)) {
    std::fprintf(stderr, "driver: input ended early\n");
    std::exit(2);
  }
  return std::strtod(token.c_str(), nullptr);
}

int64_t next_int() { return static_cast<int64_t>(next_number()); }

Vector next_numbers(int64_t count) {
  Vector values(count);
  for (double& v : values) v = next_number();
  return values;
}

void print(double value) { std::printf("%.17g\n", value); }

void print(const Vector& values) {
  for (double v : values) print(v);
}

// ---- window_attention -------------------------------------------------------------------------

namespace wa = attnkern::window_attention;

// In: H W window shift. Out: pixel(w, t) and region(w, t) of every token t of every window w.
void window_grid() {
  const wa::WindowGrid grid{next_int(), next_int(), next_int(), next_int()};
  for (int64_t w = 0; w < grid.windows(); ++w) {
    for (int64_t t = 0; t < grid.tokens(); ++t) {
      print(static_cast<double>(grid.pixel(w, t)));
      print(static_cast<double>(grid.region(w, t)));
    }
  }
}

// Window attention and its gradients, token by token through the index maps, logit_offset and logit_grad.
// In: B H W heads d window shift scale has_bias has_mask, qkv [B, H, W, 3, heads, d], bias [heads, N, N]
// (has_bias), mask [nW, N, N] (has_mask), grad [B, H, W, heads, d].
// Out: logits [B, nW, heads, N, N], out [B, H, W, heads, d], grad_qkv like qkv, grad_bias (has_bias).
void window_attention() {
  const int64_t B = next_int(), H = next_int(), W = next_int(), heads = next_int(), d = next_int();
  const wa::WindowGrid grid{H, W, next_int(), next_int()};
  const double scale = next_number();
  const bool has_bias = next_int() != 0, has_mask = next_int() != 0;
  const int64_t N = grid.tokens(), nW = grid.windows(), HW = H * W;
  const Vector qkv = next_numbers(B * HW * 3 * heads * d);
  const Vector bias = next_numbers(has_bias ? heads * N * N : 0);
  const Vector mask = next_numbers(has_mask ? nW * N * N : 0);
  const Vector grad = next_numbers(B * HW * heads * d);
  Vector logits, out(grad.size()), grad_qkv(qkv.size()), grad_bias(bias.size());
  std::vector<int64_t> pixel(N);
  std::vector<int> region(N);
  auto dot = [&](const double* a, const double* b) {
    double sum = 0;
    for (int64_t c = 0; c < d; ++c) sum += a[c] * b[c];
    return sum;
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t w = 0; w < nW; ++w) {
      for (int64_t t = 0; t < N; ++t) {
        pixel[t] = b * HW + grid.pixel(w, t);
        region[t] = grid.region(w, t);
      }
      for (int64_t h = 0; h < heads; ++h) {
        auto q = [&](int64_t t) { return qkv.data() + wa::qkv_offset(pixel[t], 0, h, heads, d); };
        auto k = [&](int64_t t) { return qkv.data() + wa::qkv_offset(pixel[t], 1, h, heads, d); };
        auto v = [&](int64_t t) { return qkv.data() + wa::qkv_offset(pixel[t], 2, h, heads, d); };
        auto dq = [&](int64_t t) { return grad_qkv.data() + wa::qkv_offset(pixel[t], 0, h, heads, d); };
        auto dk = [&](int64_t t) { return grad_qkv.data() + wa::qkv_offset(pixel[t], 1, h, heads, d); };
        auto dv = [&](int64_t t) { return grad_qkv.data() + wa::qkv_offset(pixel[t], 2, h, heads, d); };
        const double* bias_h = has_bias ? bias.data() + h * N * N : nullptr;
        const double* mask_w = has_mask ? mask.data() + w * N * N : nullptr;
        const int* regions = grid.shift > 0 ? region.data() : nullptr;
        Vector p(N * N);
        for (int64_t i = 0; i < N; ++i) {
          double max = -INFINITY;
          for (int64_t j = 0; j < N; ++j) {
            const double s = scale * dot(q(i), k(j)) + wa::logit_offset<double>(bias_h, mask_w, regions, i, j, N);
            logits.push_back(s);
            p[i * N + j] = s;
            max = std::fmax(max, s);
          }
          double total = 0;
          for (int64_t j = 0; j < N; ++j) total += (p[i * N + j] = std::exp(p[i * N + j] - max));
          for (int64_t j = 0; j < N; ++j) p[i * N + j] /= total;
        }
        for (int64_t i = 0; i < N; ++i) {
          double* o = out.data() + wa::out_offset(pixel[i], h, heads, d);
          const double* g = grad.data() + wa::out_offset(pixel[i], h, heads, d);
          for (int64_t j = 0; j < N; ++j) {
            for (int64_t c = 0; c < d; ++c) o[c] += p[i * N + j] * v(j)[c];
          }
          const double delta = dot(g, o);
          for (int64_t j = 0; j < N; ++j) {
            const double ds = wa::logit_grad(p[i * N + j], dot(g, v(j)), delta);
            for (int64_t c = 0; c < d; ++c) {
              dq(i)[c] += scale * ds * k(j)[c];
              dk(j)[c] += scale * ds * q(i)[c];
              dv(j)[c] += p[i * N + j] * g[c];
            }
            if (has_bias) grad_bias[(h * N + i) * N + j] += ds;
          }
        }
      }
    }
  }
  print(logits);
  print(out);
  print(grad_qkv);
  print(grad_bias);
}

// ---- covpool ----------------------------------------------------------------------------------

namespace cp = attnkern::covpool;
using Products = cp::SquareProducts<double, cp::SerialLanes>;

// The product policy on matrices stored by rows ld ≥ n apart (the one-block kernels' shared matrices: odd
// ld), every orientation of its operands. In: n, ld, a, b, c (n×n each). Out, for (a, b) transposed or
// not (ab, abᵀ, aᵀb, aᵀbᵀ): 2·op(a)·op(b) − c, then c' = c + op(a)·op(b) written over c itself, then
// ½·op(a)·op(b) + 3·I. The padding between rows is NaN: a read of it would show.
void ns_products() {
  const int n = static_cast<int>(next_int()), ld = static_cast<int>(next_int());
  const Vector a = next_numbers(n * n), b = next_numbers(n * n), c = next_numbers(n * n);
  auto padded = [&](const Vector& m) {
    Vector out(static_cast<size_t>(n) * ld, std::nan(""));
    for (int i = 0; i < n; ++i) std::copy(m.begin() + i * n, m.begin() + (i + 1) * n, out.begin() + i * ld);
    return out;
  };
  auto print_padded = [&](const Vector& m) {
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) print(m[i * ld + j]);
    }
  };
  const Vector pa = padded(a), pb = padded(b), pc = padded(c);
  const Products m{n, ld};
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      const Products::Operand oa = ta ? m.transposed(pa.data()) : Products::Operand(pa.data());
      const Products::Operand ob = tb ? m.transposed(pb.data()) : Products::Operand(pb.data());
      Vector out = padded(Vector(n * n, 0.0)), acc = pc;
      m.product(out.data(), oa, ob, 2.0, pc.data(), -1.0);
      print_padded(out);
      m.product(acc.data(), oa, ob, 1.0, acc.data(), 1.0);
      print_padded(acc);
      m.product(out.data(), oa, ob, 0.5, m.identity(), 3.0);
      print_padded(out);
    }
  }
}

// In: n, Y, Z. Out: T, Y', Z' of one step.
void ns_step() {
  const int n = static_cast<int>(next_int());
  const Vector y = next_numbers(n * n), z = next_numbers(n * n);
  Vector t(n * n), y_next(n * n), z_next(n * n);
  cp::newton_schulz_step(Products{n}, y.data(), z.data(), t.data(), y_next.data(), z_next.data());
  print(t);
  print(y_next);
  print(z_next);
}

// In: n, Y, Z. Out: Z·Y and P of the final step.
void ns_final() {
  const int n = static_cast<int>(next_int());
  const Vector y = next_numbers(n * n), z = next_numbers(n * n);
  Vector zy(n * n), p(n * n);
  cp::newton_schulz_final(Products{n}, y.data(), z.data(), zy.data(), p.data());
  print(zy);
  print(p);
}

// In: n, Y, Z, gP. Out: gY, gZ of the final step (its Z·Y's matrix reused as work space, as the kernels do).
void ns_final_backward() {
  const int n = static_cast<int>(next_int());
  const Vector y = next_numbers(n * n), z = next_numbers(n * n), gp = next_numbers(n * n);
  Vector zy(n * n), p(n * n), gy(n * n), gz(n * n);
  const Products m{n};
  cp::newton_schulz_final(m, y.data(), z.data(), zy.data(), p.data());
  cp::newton_schulz_final_backward_first(m, gp.data(), zy.data(), gy.data());
  cp::newton_schulz_final_backward_rest(m, gp.data(), y.data(), zy.data(), gy.data(), gz.data(), zy.data());
  print(gy);
  print(gz);
}

// In: n, Y, Z, T, gY', gZ'. Out: gT, gY, gZ of one step reversed.
void ns_step_backward() {
  const int n = static_cast<int>(next_int());
  const Vector y = next_numbers(n * n), z = next_numbers(n * n), t = next_numbers(n * n);
  const Vector gy_next = next_numbers(n * n), gz_next = next_numbers(n * n);
  Vector gt(n * n), gy(n * n), gz(n * n);
  cp::newton_schulz_step_backward(Products{n}, y.data(), z.data(), t.data(), gy_next.data(), gz_next.data(),
                                  gt.data(), gy.data(), gz.data());
  print(gt);
  print(gy);
  print(gz);
}

// The square root of a (trace ≠ 0) and its gradient for G, composed as the one-block CUDA kernels compose
// the steps: four matrices in turn (the *_in_place steps), Yₖ, Zₖ, Tₖ stored for the backward.
// In: n, iters, a, G. Out: sqrtm(a), ∂L/∂a.
void sqrtm() {
  const int n = static_cast<int>(next_int()), iters = static_cast<int>(next_int()), nn = n * n;
  const Vector a = next_numbers(nn), g = next_numbers(nn);
  const Products m{n};
  double t = 0;
  for (int i = 0; i < n; ++i) t += a[i * n + i];
  Vector b0(nn), b1(nn), b2(nn), b3(nn), iterates(3 * iters * nn);
  double *Y = b0.data(), *Z = b1.data(), *T = b2.data(), *W = b3.data();
  for (int e = 0; e < nn; ++e) {
    Y[e] = a[e] / t;
    Z[e] = e / n == e % n ? 1 : 0;
  }
  auto slot = [&](int k, int which) { return iterates.data() + (3 * k + which) * nn; };
  auto store = [&](double* dst, const double* src) { std::copy(src, src + nn, dst); };
  for (int k = 0; k + 1 < iters; ++k) {
    store(slot(k, 0), Y);
    store(slot(k, 1), Z);
    if (k == 0) {
      cp::newton_schulz_first_step_in_place(m, Y, Z, T, W);
      store(slot(k, 2), Z);  // T₀ is Z₁, in Z's matrix
    } else {
      cp::newton_schulz_step_in_place(m, Y, Z, T, W);
      store(slot(k, 2), T);
    }
  }
  store(slot(iters - 1, 0), Y);
  store(slot(iters - 1, 1), Z);
  cp::newton_schulz_final(m, Y, Z, T, W);
  for (int e = 0; e < nn; ++e) print(W[e] * std::sqrt(t));

  const double* Yf = slot(iters - 1, 0);
  double *ZY = b0.data(), *Gp = b1.data(), *gY = b2.data(), *gZ = b3.data();
  cp::newton_schulz_final_zy(m, Yf, slot(iters - 1, 1), ZY);
  for (int e = 0; e < nn; ++e) Gp[e] = g[e] * std::sqrt(t);
  cp::newton_schulz_final_backward_first(m, Gp, ZY, gY);
  double gy_dot_y = 0;
  for (int e = 0; e < nn; ++e) gy_dot_y += gY[e] * Yf[e];
  const double g_dot_p = gy_dot_y / std::sqrt(t);  // ⟨G, P⟩
  cp::newton_schulz_final_backward_rest(m, Gp, Yf, ZY, gY, gZ, /*work=*/ZY);
  double *gT = b0.data(), *spare = b1.data();
  for (int k = iters - 2; k > 0; --k) {
    cp::newton_schulz_step_backward_in_place(m, slot(k, 0), slot(k, 1), slot(k, 2), gY, gZ, gT, spare);
  }
  if (iters > 1) cp::newton_schulz_first_step_backward_in_place(m, slot(0, 0), slot(0, 2), gY, gZ, gT, spare);
  double ga_dot_a = 0;
  for (int e = 0; e < nn; ++e) ga_dot_a += gY[e] * slot(0, 0)[e];
  const double coef = cp::trace_grad_coefficient(ga_dot_a, g_dot_p, t);
  for (int e = 0; e < nn; ++e) print(gY[e] / t + (e / n == e % n ? coef : 0));
}

// In: n. Out: for each row i < n and j ≤ i, row by row (the kernels' walk): i, j and triu_index(i, j).
void triu() {
  const int64_t n = next_int();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      print(static_cast<double>(i));
      print(static_cast<double>(j));
      print(static_cast<double>(cp::triu_index(i, j)));
    }
  }
}

// ---- region_conv ------------------------------------------------------------------------------

namespace rc = attnkern::region_conv;

// In: stride pad dilation in_size out_size kernel (one axis). Out: input_of_tap(out, tap) for every out,
// tap (row-major), then output_of_tap(in, tap) for every in, tap.
void taps() {
  const int64_t stride = next_int(), pad = next_int(), dilation = next_int();
  const int64_t in_size = next_int(), out_size = next_int(), kernel = next_int();
  for (int64_t out = 0; out < out_size; ++out) {
    for (int64_t tap = 0; tap < kernel; ++tap) {
      print(static_cast<double>(rc::input_of_tap(out, tap, stride, pad, dilation, in_size)));
    }
  }
  for (int64_t in = 0; in < in_size; ++in) {
    for (int64_t tap = 0; tap < kernel; ++tap) {
      print(static_cast<double>(rc::output_of_tap(in, tap, stride, pad, dilation, out_size)));
    }
  }
}

// In: Cin H W Cout kh kw H' W' stride_h stride_w pad_h pad_w dilation_h dilation_w (ConvGeometry's order),
// x [Cin, H, W], filter [Cout, Cin·kh·kw]. Out: im2col_source of every tap of every output pixel
// [H', W', Cin·kh·kw], the taps walked 5 at a time (Tap::advance's carries), then the convolution
// [Cout, H', W'] as Σ_k filter·im2col_entry, the taps walked 16 at a time as the CUDA products walk them.
void conv() {
  rc::ConvGeometry g{};
  for (int64_t* field : {&g.in_channels, &g.height, &g.width, &g.out_channels, &g.kernel_h, &g.kernel_w,
                         &g.out_height, &g.out_width, &g.stride_h, &g.stride_w, &g.pad_h, &g.pad_w,
                         &g.dilation_h, &g.dilation_w}) {
    *field = next_int();
  }
  const Vector x = next_numbers(g.in_channels * g.height * g.width);
  const Vector filter = next_numbers(g.out_channels * g.filter_size());
  const auto by5 = rc::narrow_geometry(g, 5), by16 = rc::narrow_geometry(g, 16);
  std::vector<int> sources(by5.K);
  for (int l = 0; l < by5.L; ++l) {
    for (int first = 0; first < by5.step; ++first) {
      for (rc::Tap tap(first, by5); tap.k < by5.K; tap.advance(by5)) {
        sources[tap.k] = rc::im2col_source(by5, tap, rc::Pixel(l, by5));
      }
    }
    for (int source : sources) print(static_cast<double>(source));
  }
  for (int o = 0; o < by16.out_channels; ++o) {
    for (int l = 0; l < by16.L; ++l) {
      double sum = 0;
      for (int first = 0; first < by16.step; ++first) {
        for (rc::Tap tap(first, by16); tap.k < by16.K; tap.advance(by16)) {
          sum += filter[o * by16.K + tap.k] * rc::im2col_entry<double>(x.data(), by16, tap, rc::Pixel(l, by16));
        }
      }
      print(sum);
    }
  }
}

// In: r C P, guide [r, P], grad [C, P], outputs [r, C, P] (one sample of P pixels). Out: the selected
// region of every pixel [P], then the guide's gradient [r, P] (DRConv's straight-through rule), G_r
// summed over two channel slices as a CUDA block sums it over its warps'.
void region_assign() {
  const int64_t R = next_int(), C = next_int(), P = next_int();
  const Vector guide = next_numbers(R * P), grad = next_numbers(C * P), outputs = next_numbers(R * C * P);
  for (int64_t p = 0; p < P; ++p) print(static_cast<double>(rc::selected_region(guide.data() + p, R, P)));
  Vector guide_grad(R * P), grad_outputs(R * C * P), responses(R);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t selected = rc::selected_region(guide.data() + p, R, P);
    for (int64_t r = 0; r < R; ++r) {
      responses[r] = 0;
      for (int64_t slice = 0; slice < 2; ++slice) {
        responses[r] += rc::straight_through_channels<double>(grad.data() + p, outputs.data() + r * C * P + p,
                                                              grad_outputs.data() + r * C * P + p, r == selected,
                                                              slice, C, int64_t(2), P);
      }
    }
    rc::guide_gradient<double>(guide.data() + p, guide_grad.data() + p, R, P, [&](int64_t r) { return responses[r]; });
  }
  print(guide_grad);
  print(grad_outputs);
}

// ---- criss_cross ------------------------------------------------------------------------------

namespace cc = attnkern::criss_cross;

// In: C H W, q, k, v, g [C, H, W], a [H + W − 1, H, W] (one sample). Out: affinity_entry(q, k)
// [P, H, W], aggregate_entry(a, v) [C, H, W], aggregate_transposed_entry(a, g) [C, H, W].
void criss_cross() {
  const int64_t C = next_int(), H = next_int(), W = next_int(), HW = H * W, P = H + W - 1;
  const Vector q = next_numbers(C * HW), k = next_numbers(C * HW), v = next_numbers(C * HW);
  const Vector g = next_numbers(C * HW), a = next_numbers(P * HW);
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) print(cc::affinity_entry<double>(q.data(), k.data(), C, H, W, p, h, w));
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) print(cc::aggregate_entry<double>(a.data(), v.data() + c * HW, H, W, h, w));
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        print(cc::aggregate_transposed_entry<double>(a.data(), g.data() + c * HW, H, W, y, x));
      }
    }
  }
}

// The fused attention's softmax over one pixel's P positions, from its log-sum-exp. In: P, energies [P],
// gradients of the weights [P] (g·v_p). Out: the weights exp(e − lse) [P], energy_grad [P].
void criss_cross_softmax() {
  const int64_t P = next_int();
  const Vector energy = next_numbers(P), grad_weight = next_numbers(P);
  double max = -INFINITY, total = 0, d = 0;
  for (double e : energy) max = std::fmax(max, e);
  for (double e : energy) total += std::exp(e - max);
  const double lse = max + std::log(total);
  Vector weight(P);
  for (int64_t p = 0; p < P; ++p) d += (weight[p] = std::exp(energy[p] - lse)) * grad_weight[p];
  print(weight);
  for (int64_t p = 0; p < P; ++p) print(cc::energy_grad(weight[p], grad_weight[p], d));
}

// ---- gating -----------------------------------------------------------------------------------

namespace gt = attnkern::gating;

// The mean and max of one row and their gradients, as the CPU kernel composes pool_gradient and max_share.
// In: n, x [n], grad_mean, grad_max. Out: max, then ∂/∂x [n].
void pool() {
  const int64_t n = next_int();
  const Vector x = next_numbers(n);
  const double grad_mean = next_number(), grad_max = next_number();
  double max = x[0];
  for (double v : x) max = gt::nan_max(v, max);
  int64_t ties = 0;
  for (double v : x) ties += v == max;
  const double share = gt::max_share(grad_max, ties);
  print(max);
  for (double v : x) print(gt::pool_gradient(grad_mean / static_cast<double>(n), share, v == max));
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::pair<std::string, void (*)()>> commands = {
      {"window_grid", window_grid}, {"window_attention", window_attention},
      {"ns_step", ns_step}, {"ns_final", ns_final}, {"ns_final_backward", ns_final_backward},
      {"ns_step_backward", ns_step_backward}, {"ns_products", ns_products}, {"sqrtm", sqrtm}, {"triu", triu},
      {"taps", taps}, {"conv", conv}, {"region_assign", region_assign},
      {"criss_cross", criss_cross}, {"criss_cross_softmax", criss_cross_softmax}, {"pool", pool},
  };
  for (const auto& [name, run] : commands) {
    if (argc == 2 && name == argv[1]) {
      run();
      return 0;
    }
  }
  std::fprintf(stderr, "usage: driver <command>; unknown command\n");
  return 2;
}
