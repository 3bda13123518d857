// Compiles a kernel body once per CPU capability (cpu_capability.h), in one translation unit:
//
//   #include ...every header the file needs...
//   #define ATTNKERN_CPU_KERNEL_BODY "family/family_cpu_kernel.h"
//   #include "common/cpu_foreach_capability.h"
//   ... ATTNKERN_CPU_DISPATCH(name)(args) calls the version of the capability in use ...
//
// The body is included once per capability, inside namespace ATTNKERN_CPU_NAMESPACE (cpu_default,
// cpu_avx2, cpu_avx512) of its own namespaces, with the vector helpers of cpu_vec.h for that width and
// every function it defines compiled for that instruction set (GCC's `#pragma GCC target`, Clang's
// `#pragma clang attribute`). Everything outside the body — the headers included before this one, the
// host code after it — is compiled for the baseline, so no inline function of ATen or the standard
// library is ever emitted with AVX instructions (the hazard of compiling whole files with -mavx2).
// Hence the rules for a body: it includes nothing, and defines no namespace-scope variable that is not
// constexpr (a dynamic initialiser would run at load time, before any CPU check).
//
// No include guard: one use per translation unit.
#ifndef ATTNKERN_CPU_KERNEL_BODY
#error "define ATTNKERN_CPU_KERNEL_BODY (the header to compile per capability) before including this file"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/cpu_capability.h"

// Each capability: its namespace, vector width and vector registers, and the instruction set its
// functions are compiled for (cpu_one_capability.h; none for the baseline).
#if ATTNKERN_CPU_X86_CAPABILITIES
#define ATTNKERN_CPU_NAMESPACE cpu_avx512
#define ATTNKERN_CPU_VECTOR_BYTES 64
#define ATTNKERN_CPU_VECTOR_REGISTERS 32
#define ATTNKERN_CPU_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2,f16c"
#include "common/cpu_one_capability.h"

#define ATTNKERN_CPU_NAMESPACE cpu_avx2
#define ATTNKERN_CPU_VECTOR_BYTES 32
#define ATTNKERN_CPU_VECTOR_REGISTERS 16
#define ATTNKERN_CPU_TARGET "avx2,fma,bmi2,f16c"
#include "common/cpu_one_capability.h"
#endif  // ATTNKERN_CPU_X86_CAPABILITIES

// The baseline: 16-byte vectors (SSE2 on x86-64, NEON on Arm), compiled with the file's own flags.
#define ATTNKERN_CPU_NAMESPACE cpu_default
#define ATTNKERN_CPU_VECTOR_BYTES 16
#define ATTNKERN_CPU_VECTOR_REGISTERS 16
#include "common/cpu_one_capability.h"

// ATTNKERN_CPU_DISPATCH(name): the version of `name` (a function of the body, template arguments
// allowed) for the capability in use, looked up in the cpu_* namespaces of the current namespace.
#if ATTNKERN_CPU_X86_CAPABILITIES
#define ATTNKERN_CPU_DISPATCH(...)                                                             \
  (::attnkern::cpu_capability() == ::attnkern::CpuCapability::kAvx512 ? &cpu_avx512::__VA_ARGS__ \
   : ::attnkern::cpu_capability() == ::attnkern::CpuCapability::kAvx2 ? &cpu_avx2::__VA_ARGS__   \
                                                                        : &cpu_default::__VA_ARGS__)
#else
#define ATTNKERN_CPU_DISPATCH(...) (&cpu_default::__VA_ARGS__)
#endif
