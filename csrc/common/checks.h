// Argument checks shared by every op: each error names the op and the argument, what was expected and
// what was received.
//
// These checks are the one source of truth for the arguments an op receives: the kernels call them,
// so do the `<op>_check` ops that attnkern.ops runs before a pure-PyTorch reference (devices without
// kernels). A wrong shape, size or value is a TORCH_CHECK_VALUE (Python ValueError); a wrong dtype,
// device or kind of tensor a TORCH_CHECK_TYPE (Python TypeError). Size arithmetic in checks is done
// with checked_mul/checked_add: a size that does not fit in int64 is a ValueError, never an overflow.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <sstream>
#include <string>

namespace attnkern {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// A tensor with no elements may have sizes whose product overflows (torch.empty(0, 1).expand(0, 2**62)):
// refusing those makes every product of a tensor's sizes, which kernels compute, fit in int64.
inline void check_sizes_fit(const at::Tensor& t, const char* name) {
  int64_t product = 1;
  for (const int64_t size : t.sizes()) {
    TORCH_CHECK_VALUE(size == 0 || !c10::mul_overflows(product, size, &product), name,
                      ": expected sizes whose product fits in int64, got shape ", shape_str(t));
  }
}

// The rank, and sizes whose product fits in int64 (check_sizes_fit).
inline void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, name, ": expected a ", rank, "-D tensor ", layout, ", got shape ",
                    shape_str(t));
  check_sizes_fit(t, name);
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, ": expected a floating-point tensor, got ",
                   t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                              const char* b_name) {
  TORCH_CHECK_TYPE(a.device() == b.device(), a_name, " and ", b_name,
                   " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                             const char* b_name) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), a_name, " and ", b_name,
                   " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

// `layout` (e.g. "[B, C]") names the dims of `expected` in the message.
inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected, const char* layout = nullptr) {
  TORCH_CHECK_VALUE(t.sizes() == expected, name, ": expected shape ", layout ? layout : "", layout ? " = " : "",
                    expected, ", got ", shape_str(t));
  check_sizes_fit(t, name);
}

// lo <= value <= hi.
inline void check_in_range(int64_t value, const char* name, int64_t lo, int64_t hi) {
  TORCH_CHECK_VALUE(lo <= value && value <= hi, name, " must be in [", lo, ", ", hi, "], got ", value);
}

// a·b and a + b, or a ValueError saying which size (`what`) does not fit in int64.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(a, b, &out), what, " = ", a, " * ", b, " does not fit in int64");
  return out;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  TORCH_CHECK_VALUE(!c10::add_overflows(a, b, &out), what, " = ", a, " + ", b, " does not fit in int64");
  return out;
}

}  // namespace attnkern
