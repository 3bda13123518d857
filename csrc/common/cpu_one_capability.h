// One capability's copy of the kernel body, for cpu_foreach_capability.h (which includes it once per
// capability, and is the only file to include it). It expects ATTNKERN_CPU_KERNEL_BODY and
// ATTNKERN_CPU_NAMESPACE, ATTNKERN_CPU_VECTOR_BYTES, ATTNKERN_CPU_VECTOR_REGISTERS and, for every
// capability but the baseline, ATTNKERN_CPU_TARGET (the instruction set, in GCC's `target` attribute
// syntax) defined; it compiles the vector helpers (cpu_vec.h) and the body into that namespace, every
// function of them for that instruction set, and undefines the four.
//
// No include guard: included once per capability.
#if !defined(ATTNKERN_CPU_NAMESPACE) || !defined(ATTNKERN_CPU_VECTOR_BYTES) || !defined(ATTNKERN_CPU_VECTOR_REGISTERS)
#error "cpu_one_capability.h is included by cpu_foreach_capability.h, with a capability's macros defined"
#endif

// _Pragma with a macro-expanded argument: a #pragma line itself does not expand ATTNKERN_CPU_TARGET.
#define ATTNKERN_CPU_PRAGMA_STRING(text) _Pragma(#text)
#define ATTNKERN_CPU_PRAGMA(text) ATTNKERN_CPU_PRAGMA_STRING(text)

#if defined(ATTNKERN_CPU_TARGET)
#if defined(__clang__)
ATTNKERN_CPU_PRAGMA(clang attribute push(__attribute__((target(ATTNKERN_CPU_TARGET))), apply_to = function))
#else
#pragma GCC push_options
ATTNKERN_CPU_PRAGMA(GCC target(ATTNKERN_CPU_TARGET))
#endif
#endif

#include "common/cpu_vec.h"
#include ATTNKERN_CPU_KERNEL_BODY

#if defined(ATTNKERN_CPU_TARGET)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#undef ATTNKERN_CPU_PRAGMA
#undef ATTNKERN_CPU_PRAGMA_STRING
#undef ATTNKERN_CPU_NAMESPACE
#undef ATTNKERN_CPU_VECTOR_BYTES
#undef ATTNKERN_CPU_VECTOR_REGISTERS
#undef ATTNKERN_CPU_TARGET
