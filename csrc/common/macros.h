// Function qualifiers. ATTNKERN_HD: host/device math shared by the CPU and CUDA kernels; on the CPU it
// is always inlined, so that it is compiled into each capability's version of a vectorised kernel
// (cpu_foreach_capability.h). ATTNKERN_ALWAYS_INLINE: CPU helpers inlined the same way.
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
