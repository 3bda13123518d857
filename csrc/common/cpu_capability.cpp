// Which CPU capability the vectorised kernels run with (cpu_capability.h).
#include "common/cpu_capability.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace attnkern {

namespace {

CpuCapability detect() {
#if ATTNKERN_CPU_X86_CAPABILITIES
  // __builtin_cpu_supports also checks that the OS saves the vector registers (XGETBV).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
    return CpuCapability::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuCapability::kAvx2;
#endif
  return CpuCapability::kDefault;
}

CpuCapability choose() {
  const CpuCapability supported = cpu_capability_supported();
  const char* requested = std::getenv("ATTNKERN_CPU_CAPABILITY");
  if (requested == nullptr || *requested == '\0') return supported;
  for (int c = 0; c < kCpuCapabilities; ++c) {
    const auto capability = static_cast<CpuCapability>(c);
    if (std::strcmp(requested, cpu_capability_name(capability)) != 0) continue;
    if (capability > supported) {
      TORCH_WARN("ATTNKERN_CPU_CAPABILITY=", requested, " is beyond what this CPU (or build) runs; using ",
                 cpu_capability_name(supported));
      return supported;
    }
    return capability;
  }
  TORCH_WARN("ignoring ATTNKERN_CPU_CAPABILITY=", requested, ": expected default, avx2 or avx512; using ",
             cpu_capability_name(supported));
  return supported;
}

}  // namespace

CpuCapability cpu_capability_supported() {
  static const CpuCapability supported = detect();
  return supported;
}

CpuCapability cpu_capability() {
  static const CpuCapability chosen = choose();
  return chosen;
}

const char* cpu_capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::kAvx512:
      return "avx512";
    case CpuCapability::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

}  // namespace attnkern
