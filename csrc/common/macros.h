// Function qualifiers, two because their roles differ:
//   ATTNKERN_HD             math shared by the CPU and CUDA kernels: __host__ __device__ under nvcc.
//   ATTNKERN_ALWAYS_INLINE  CPU-only helpers (cpu_vec.h, *_cpu_kernel.h), never device code.
// and ATTNKERN_HD_TEMPLATE, written before an ATTNKERN_HD function template that calls a template
// argument's functions (a policy) which may be host-only (an at::Tensor policy) or device-only (a CUDA
// block's): nvcc's `#pragma nv_exec_check_disable`, so that it does not diagnose the side of an
// instantiation that is never called (a host-only call in device code, or the reverse). Nothing elsewhere.
// On the host compiler both force inlining, so that each CPU capability's kernel body
// (cpu_foreach_capability.h) gets its own copy. ATTNKERN_HD carries no `inline` (write `ATTNKERN_HD
// inline`); ATTNKERN_ALWAYS_INLINE does.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ATTNKERN_HD __host__ __device__
#elif defined(__GNUC__)
#define ATTNKERN_HD __attribute__((always_inline))
#else
#define ATTNKERN_HD
#endif

#if defined(__GNUC__)
#define ATTNKERN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ATTNKERN_ALWAYS_INLINE inline
#endif

#if defined(__NVCC__)
#define ATTNKERN_HD_TEMPLATE _Pragma("nv_exec_check_disable")
#else
#define ATTNKERN_HD_TEMPLATE
#endif
