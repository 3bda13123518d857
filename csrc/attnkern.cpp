// The schemas of every attnkern op. Kernels are registered per device in csrc/<family>/; autograd
// and fake (meta) kernels in Python (attnkern/ops/).
//
// Each forward op has an `<op>_check` op with its arguments that returns nothing: it raises the error
// the op would raise for them (ValueError/TypeError naming the argument), on any device. The kernels
// and the check ops run the same C++ checks (csrc/<family>/<family>_host.cpp); attnkern.ops runs the
// check op before a pure-PyTorch reference on devices without kernels.
#include <torch/library.h>

#include <string>

#include "common/cpu_capability.h"

TORCH_LIBRARY(attnkern, m) {
  // The CPU capability the vectorised CPU kernels run with: "default", "avx2" or "avx512"
  // (common/cpu_capability.h). The one op defined with its kernel here: it takes no tensor to dispatch on.
  m.def("cpu_capability() -> str", [] { return std::string(attnkern::cpu_capability_name(attnkern::cpu_capability())); });

  // covpool family (csrc/covpool): SAN's second-order channel attention.
  m.def("covpool(Tensor x) -> Tensor");
  m.def("covpool_backward(Tensor grad, Tensor x) -> Tensor");
  // With save_iterates, the second output holds the iterates the backward reuses (else it is empty).
  m.def("sqrtm_newton_schulz(Tensor a, int iters, bool save_iterates=False) -> (Tensor, Tensor)");
  m.def("sqrtm_newton_schulz_backward(Tensor grad, Tensor a, Tensor iterates, int iters) -> Tensor");
  m.def("triuvec(Tensor a) -> Tensor");
  m.def("triuvec_backward(Tensor grad, SymInt n) -> Tensor");
  m.def("covpool_check(Tensor x) -> ()");
  m.def("sqrtm_newton_schulz_check(Tensor a, int iters) -> ()");
  m.def("triuvec_check(Tensor a) -> ()");

  // criss_cross family (csrc/criss_cross): CCNet. Maps have H + W − 1 positions (criss_cross.h).
  m.def("criss_cross_affinity(Tensor q, Tensor k) -> Tensor");
  m.def("criss_cross_aggregate(Tensor attn, Tensor v) -> Tensor");
  m.def("criss_cross_aggregate_transposed(Tensor attn, Tensor x) -> Tensor");
  // Fused: softmax over the positions inside; returns (out, lse), lse [B, H, W] the per-pixel log-sum-exp.
  m.def("criss_cross_attention(Tensor q, Tensor k, Tensor v) -> (Tensor, Tensor)");
  m.def("criss_cross_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("criss_cross_affinity_check(Tensor q, Tensor k) -> ()");
  m.def("criss_cross_aggregate_check(Tensor attn, Tensor v) -> ()");
  m.def("criss_cross_attention_check(Tensor q, Tensor k, Tensor v) -> ()");

  // region_conv family (csrc/region_conv): DRConv.
  m.def("region_assign(Tensor outputs, Tensor guide) -> Tensor");
  m.def("region_assign_backward(Tensor grad, Tensor outputs, Tensor guide) -> (Tensor, Tensor)");
  m.def("dynamic_region_conv(Tensor x, Tensor filters, Tensor guide, int[2] stride, int[2] padding, int[2] dilation)"
        " -> Tensor");
  m.def("dynamic_region_conv_backward(Tensor grad, Tensor x, Tensor filters, Tensor guide, int[2] stride,"
        " int[2] padding, int[2] dilation) -> (Tensor, Tensor, Tensor)");
  m.def("region_assign_check(Tensor outputs, Tensor guide) -> ()");
  m.def("dynamic_region_conv_check(Tensor x, Tensor filters, Tensor guide, int[2] stride, int[2] padding,"
        " int[2] dilation) -> ()");

  // gating family (csrc/gating): SE / CBAM poolings and gates. Maxima as torch.amax (NaN wins, ties share
  // the gradient). An absent optional gate is 1; backward returns an empty tensor for an absent gate.
  m.def("channel_pool(Tensor x) -> (Tensor, Tensor)");
  m.def("channel_pool_backward(Tensor? grad_mean, Tensor? grad_max, Tensor x, Tensor max) -> Tensor");
  m.def("spatial_pool(Tensor x, Tensor? gate) -> Tensor");
  m.def("spatial_pool_backward(Tensor grad, Tensor x, Tensor? gate, Tensor pooled) -> (Tensor, Tensor)");
  m.def("apply_gates(Tensor x, Tensor? channel_gate, Tensor? pixel_gate) -> Tensor");
  m.def("apply_gates_backward(Tensor grad, Tensor x, Tensor? channel_gate, Tensor? pixel_gate)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("channel_pool_check(Tensor x) -> ()");
  m.def("spatial_pool_check(Tensor x, Tensor? gate) -> ()");
  m.def("apply_gates_check(Tensor x, Tensor? channel_gate, Tensor? pixel_gate) -> ()");
  // SGE: x [B, C, H, W], weight and bias [G] (G = groups divides C); the backward returns (∂x, ∂weight, ∂bias).
  m.def("group_enhance(Tensor x, Tensor weight, Tensor bias, int groups) -> Tensor");
  m.def("group_enhance_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, int groups)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("group_enhance_check(Tensor x, Tensor weight, Tensor bias, int groups) -> ()");

  // window_attention family (csrc/window_attention): Swin/SwinIR shifted-window attention in image layout.
  // qkv [B, H, W, 3, heads, d] → (out [B, H, W, heads, d], lse [B, H, W, heads]); the backward returns
  // (grad_qkv, grad_bias), grad_bias empty when bias is None. The mask gets no gradient.
  m.def("window_attention(Tensor qkv, Tensor? bias, Tensor? mask, int window_size, int shift_size, float scale)"
        " -> (Tensor, Tensor)");
  m.def("window_attention_backward(Tensor grad, Tensor qkv, Tensor? bias, Tensor? mask, Tensor out, Tensor lse,"
        " int window_size, int shift_size, float scale) -> (Tensor, Tensor)");
  m.def("window_attention_check(Tensor qkv, Tensor? bias, Tensor? mask, int window_size, int shift_size) -> ()");
}
