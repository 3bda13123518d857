// Criss-cross attention: argument checks (criss_cross_host.cpp defines them). The math is in criss_cross.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "criss_cross/criss_cross.h"

namespace attnkern {
namespace criss_cross {

void check_affinity_inputs(const at::Tensor& q, const at::Tensor& k);
// attn [B, H+W−1, H, W] with x [B, C, H, W] (v for aggregate, g for aggregate_transposed).
void check_aggregate_inputs(const at::Tensor& attn, const at::Tensor& x, const char* op, const char* x_name);
// q, k [B, C, H, W] with v [B, C', H, W].
void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* op);
// The backward's grad and out [B, C', H, W] like v, lse [B, H, W] in v's accumulation type.
void check_attention_outputs(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& lse,
                             const at::Tensor& v, const char* op);

}  // namespace criss_cross
}  // namespace attnkern
