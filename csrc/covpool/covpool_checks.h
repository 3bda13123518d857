// Covariance pooling, sqrtm and triuvec: argument checks and the host-side pieces the CPU and CUDA
// kernels share (covpool_host.cpp defines them). The math is in covpool.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

#include "covpool/covpool.h"

namespace attnkern {
namespace covpool {

// The largest iteration count sqrtm_newton_schulz accepts. Until it converges quadratically, a step
// multiplies the smallest eigenvalue of A = a/tr(a) by about 2.25, so 1000 steps bring any eigenvalue
// a float64 can hold (≥ 1e-308) to convergence; more only costs time (and 3·iters − 4 saved matrices).
constexpr int64_t kMaxIters = 1000;

// n(n+1)/2, the length of triuvec's output for n×n matrices; a ValueError naming `name` on overflow.
int64_t triuvec_length(int64_t n, const char* name);

// Argument checks: the kernels and the check ops (what attnkern.ops runs before a reference) call them.
void check_covpool_input(const at::Tensor& x);
void check_sqrtm_input(const at::Tensor& a, int64_t iters);
void check_triuvec_input(const at::Tensor& a);
void check_triuvec_grad(const at::Tensor& grad, int64_t n);
void check_grad(const at::Tensor& grad, const char* grad_name, at::IntArrayRef expected,
                const at::Tensor& input, const char* input_name);

// The iterates a training forward saves for the backward: [saved_iterate_count(iters), B, C, C] in the
// accumulation type, laid out as covpool.h says. An empty tensor stands for "not saved": the backward then
// recomputes them (with one iteration there are none to save or recompute).
at::Tensor iterates_alloc(const at::Tensor& a, int64_t iters);
at::Tensor iterates_empty(const at::Tensor& a);
// Checks a saved iterates tensor against a [B, C, C] and iters.
void check_saved_iterates(const at::Tensor& saved, const at::Tensor& a, int64_t iters);

// Newton–Schulz forward and backward over batched GEMMs (at::bmm): device-agnostic, used by the
// CPU kernels and by the CUDA kernels for matrices too large for one block's shared memory.
std::tuple<at::Tensor, at::Tensor> sqrtm_batched_forward(const at::Tensor& a, int64_t iters, bool save_iterates);
at::Tensor sqrtm_batched_backward(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& iterates,
                                  int64_t iters);

}  // namespace covpool
}  // namespace attnkern
