// Host/device qualifiers for math shared by the CPU and CUDA kernels. On the CPU the functions are
// always inlined, so that they are compiled into each ISA version of a vectorised loop (cpu_simd.h).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ATTNKERN_HD __host__ __device__
#elif defined(__GNUC__)
#define ATTNKERN_HD __attribute__((always_inline))
#else
#define ATTNKERN_HD
#endif
