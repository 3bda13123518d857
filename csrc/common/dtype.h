// The accumulation type of an input: kernels that do their work through ATen ops compute
// float16/bfloat16 inputs in float32.
#pragma once

#include <ATen/ATen.h>

namespace attnkern {

inline at::Tensor to_compute_dtype(const at::Tensor& t) {
  auto st = t.scalar_type();
  return (st == at::kHalf || st == at::kBFloat16) ? t.to(at::kFloat) : t;
}

}  // namespace attnkern
