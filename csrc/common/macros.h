// Function qualifiers, two because their roles differ:
//   ATTNKERN_HD             math shared by the CPU and CUDA kernels: __host__ __device__ under nvcc.
//   ATTNKERN_ALWAYS_INLINE  CPU-only helpers (cpu_vec.h, *_cpu_kernel.h), never device code.
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
