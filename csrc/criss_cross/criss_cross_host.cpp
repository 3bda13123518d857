// Argument checks of the criss-cross family, shared by the CPU and CUDA kernels.
#include "criss_cross/criss_cross.h"

#include <ATen/OpMathType.h>

#include "common/checks.h"

namespace attnkern {
namespace criss_cross {

void check_affinity_inputs(const at::Tensor& q, const at::Tensor& k) {
  check_rank(q, "criss_cross_affinity: q", 4, "[B, C, H, W]");
  check_rank(k, "criss_cross_affinity: k", 4, "[B, C, H, W]");
  check_floating(q, "criss_cross_affinity: q");
  check_same_dtype(q, "criss_cross_affinity: q", k, "k");
  check_same_device(q, "criss_cross_affinity: q", k, "k");
  TORCH_CHECK(q.sizes() == k.sizes(), "criss_cross_affinity: q and k must have the same shape [B, C, H, W], got ",
              shape_str(q), " and ", shape_str(k));
}

void check_aggregate_inputs(const at::Tensor& attn, const at::Tensor& x, const char* op, const char* x_name) {
  check_rank(attn, (std::string(op) + ": attn").c_str(), 4, "[B, H+W-1, H, W]");
  check_rank(x, (std::string(op) + ": " + x_name).c_str(), 4, "[B, C, H, W]");
  check_floating(attn, (std::string(op) + ": attn").c_str());
  check_same_dtype(attn, (std::string(op) + ": attn").c_str(), x, x_name);
  check_same_device(attn, (std::string(op) + ": attn").c_str(), x, x_name);
  const int64_t H = x.size(2), W = x.size(3);
  TORCH_CHECK(attn.size(0) == x.size(0) && attn.size(2) == H && attn.size(3) == W, op,
              ": attn and ", x_name, " must share batch and spatial size, got ", shape_str(attn), " and ", shape_str(x));
  TORCH_CHECK(attn.size(1) == H + W - 1, op, ": attn must hold H + W - 1 = ", H + W - 1,
              " positions in dim 1 for H = ", H, ", W = ", W, ", got ", attn.size(1));
}

void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* op) {
  check_affinity_inputs(q, k);
  check_rank(v, (std::string(op) + ": v").c_str(), 4, "[B, C, H, W]");
  check_same_dtype(q, (std::string(op) + ": q").c_str(), v, "v");
  check_same_device(q, (std::string(op) + ": q").c_str(), v, "v");
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(2) == q.size(2) && v.size(3) == q.size(3), op,
              ": v must share batch and spatial size with q, got ", shape_str(v), " and ", shape_str(q));
}

void check_attention_outputs(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& lse,
                             const at::Tensor& v, const char* op) {
  const std::string prefix = std::string(op) + ": ";
  check_shape(grad, (prefix + "grad").c_str(), v.sizes());
  check_shape(out, (prefix + "out").c_str(), v.sizes());
  check_shape(lse, (prefix + "lse").c_str(), {v.size(0), v.size(2), v.size(3)});
  check_same_dtype(grad, (prefix + "grad").c_str(), v, "v");
  check_same_dtype(out, (prefix + "out").c_str(), v, "v");
  TORCH_CHECK(lse.scalar_type() == at::toOpMathType(v.scalar_type()), prefix, "lse must be ",
              at::toOpMathType(v.scalar_type()), ", got ", lse.scalar_type());
  for (const auto* t : {&grad, &out, &lse}) check_same_device(*t, (prefix + "grad, out and lse").c_str(), v, "v");
}

}  // namespace criss_cross
}  // namespace attnkern
