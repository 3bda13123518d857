// Stand-in for c10/cuda/CUDAStream.h in the emulated build (csrc/emulation): emulated launches run to
// completion before they return, so there is one stream and it orders nothing.
#pragma once

#include <c10/core/Device.h>

#include "emulation/cuda_emulation.h"

namespace c10 {
namespace cuda {

class CUDAStream {
 public:
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return stream(); }
  c10::DeviceIndex device_index() const { return 0; }
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return CUDAStream(); }
inline CUDAStream getDefaultCUDAStream(c10::DeviceIndex = -1) { return CUDAStream(); }

}  // namespace cuda
}  // namespace c10
