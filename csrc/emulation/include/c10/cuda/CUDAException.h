// Stand-in for c10/cuda/CUDAException.h in the emulated build (csrc/emulation): C10_CUDA_CHECK throws on
// an error code as the real one does; C10_CUDA_KERNEL_LAUNCH_CHECK has nothing to check, since an
// emulated launch that fails throws at once.
#pragma once

#include <c10/util/Exception.h>

#include "emulation/cuda_emulation.h"

#define C10_CUDA_CHECK(EXPR)                                                                  \
  do {                                                                                        \
    const cudaError_t attnkern_emulated_error = (EXPR);                                       \
    TORCH_CHECK(attnkern_emulated_error == cudaSuccess, "CUDA error (emulated): ",           \
                cudaGetErrorString(attnkern_emulated_error), " in ", #EXPR);                  \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
