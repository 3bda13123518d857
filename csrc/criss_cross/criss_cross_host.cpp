// Argument checks of the criss-cross family, shared by the CPU and CUDA kernels.
#include "criss_cross/criss_cross.h"
#include "criss_cross/criss_cross_checks.h"

#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <string>

#include "common/checks.h"

namespace attnkern {
namespace criss_cross {

namespace {

// P = H + W − 1, the positions of each pixel of x [B, C, H, W]: an image needs H + W ≥ 1.
int64_t positions(const at::Tensor& x, const std::string& name) {
  const int64_t H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(H > 0 || W > 0, name, ": H and W cannot both be 0 (each pixel has H + W - 1 positions), got shape ",
                    shape_str(x));
  const int64_t P = checked_add(H, W - 1, (name + ": H + W - 1").c_str());
  checked_mul(P, checked_mul(H, W, (name + ": H·W").c_str()), (name + ": the map size (H + W - 1)·H·W").c_str());
  return P;
}

void check_qk(const at::Tensor& q, const at::Tensor& k, const std::string& prefix) {
  check_rank(q, (prefix + "q").c_str(), 4, "[B, C, H, W]");
  check_rank(k, (prefix + "k").c_str(), 4, "[B, C, H, W]");
  check_floating(q, (prefix + "q").c_str());
  check_same_dtype(q, (prefix + "q").c_str(), k, "k");
  check_same_device(q, (prefix + "q").c_str(), k, "k");
  TORCH_CHECK_VALUE(q.sizes() == k.sizes(), prefix, "q and k must have the same shape [B, C, H, W], got ",
                    shape_str(q), " and ", shape_str(k));
  positions(q, prefix + "q");
}

}  // namespace

void check_affinity_inputs(const at::Tensor& q, const at::Tensor& k) { check_qk(q, k, "criss_cross_affinity: "); }

void check_aggregate_inputs(const at::Tensor& attn, const at::Tensor& x, const char* op, const char* x_name) {
  const std::string prefix = std::string(op) + ": ";
  const std::string attn_name = prefix + "attn", name = prefix + x_name;
  check_rank(attn, attn_name.c_str(), 4, "[B, H+W-1, H, W]");
  check_rank(x, name.c_str(), 4, "[B, C, H, W]");
  check_floating(attn, attn_name.c_str());
  check_same_dtype(attn, attn_name.c_str(), x, x_name);
  check_same_device(attn, attn_name.c_str(), x, x_name);
  const int64_t H = x.size(2), W = x.size(3), P = positions(x, name);
  TORCH_CHECK_VALUE(attn.size(0) == x.size(0) && attn.size(2) == H && attn.size(3) == W, prefix, "attn and ", x_name,
                    " must share batch and spatial size, got ", shape_str(attn), " and ", shape_str(x));
  TORCH_CHECK_VALUE(attn.size(1) == P, prefix, "attn must hold H + W - 1 = ", P, " positions in dim 1 for H = ", H,
                    ", W = ", W, ", got ", attn.size(1));
}

void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* op) {
  const std::string prefix = std::string(op) + ": ";
  check_qk(q, k, prefix);
  check_rank(v, (prefix + "v").c_str(), 4, "[B, C', H, W]");
  check_same_dtype(q, (prefix + "q").c_str(), v, "v");
  check_same_device(q, (prefix + "q").c_str(), v, "v");
  TORCH_CHECK_VALUE(v.size(0) == q.size(0) && v.size(2) == q.size(2) && v.size(3) == q.size(3), prefix,
                    "v [B, C', H, W] must share batch and spatial size with q, got ", shape_str(v), " and ",
                    shape_str(q));
}

void check_attention_outputs(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& lse,
                             const at::Tensor& v, const char* op) {
  const std::string prefix = std::string(op) + ": ";
  check_shape(grad, (prefix + "grad").c_str(), v.sizes());
  check_shape(out, (prefix + "out").c_str(), v.sizes());
  check_shape(lse, (prefix + "lse").c_str(), {v.size(0), v.size(2), v.size(3)});
  check_same_dtype(grad, (prefix + "grad").c_str(), v, "v");
  check_same_dtype(out, (prefix + "out").c_str(), v, "v");
  TORCH_CHECK_TYPE(lse.scalar_type() == at::toOpMathType(v.scalar_type()), prefix, "lse must be ",
                   at::toOpMathType(v.scalar_type()), ", got ", lse.scalar_type());
  for (const auto* t : {&grad, &out, &lse}) check_same_device(*t, (prefix + "grad, out and lse").c_str(), v, "v");
}

namespace {

void aggregate_check(const at::Tensor& attn, const at::Tensor& v) {
  check_aggregate_inputs(attn, v, "criss_cross_aggregate", "v");
}

void attention_check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_attention_inputs(q, k, v, "criss_cross_attention");
}

}  // namespace

TORCH_LIBRARY_IMPL(attnkern, CompositeImplicitAutograd, m) {
  m.impl("criss_cross_affinity_check", &check_affinity_inputs);
  m.impl("criss_cross_aggregate_check", &aggregate_check);
  m.impl("criss_cross_attention_check", &attention_check);
}

}  // namespace criss_cross
}  // namespace attnkern
