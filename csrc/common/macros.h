// Host/device qualifiers for math shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ATTNKERN_HD __host__ __device__
#else
#define ATTNKERN_HD
#endif
