// Stand-in for c10/cuda/CUDAGuard.h in the emulated build (csrc/emulation): there is one emulated
// device, and its tensors are CPU tensors, so a device guard does nothing.
#pragma once

#include <c10/core/Device.h>
#include <optional>

#include "emulation/cuda_emulation.h"

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

struct OptionalCUDAGuard {
  OptionalCUDAGuard() = default;
  explicit OptionalCUDAGuard(std::optional<c10::Device>) {}
  OptionalCUDAGuard(const OptionalCUDAGuard&) = delete;
  OptionalCUDAGuard& operator=(const OptionalCUDAGuard&) = delete;
};

}  // namespace cuda
}  // namespace c10
