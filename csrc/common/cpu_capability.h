// CPU capabilities: vectorised CPU kernels are compiled once per capability and the version to run is
// picked when first needed, the way ATen's DispatchStub does it.
//
//   default  the baseline instruction set: SSE2 on x86-64 (4 floats a vector), NEON on Arm
//   avx2     AVX2 + FMA (8 floats)
//   avx512   AVX-512 F/BW/VL/DQ + FMA (16 floats)
//
// The capability in use is the best this CPU runs, lowered by the environment variable
// ATTNKERN_CPU_CAPABILITY=default|avx2|avx512 (read once, like ATen's ATEN_CPU_CAPABILITY), so that
// every version can be tested and measured on one machine.
//
// Kernel sources are compiled per capability by cpu_foreach_capability.h; ATTNKERN_CPU_DISPATCH there
// picks the version of the capability in use.
#pragma once

// AVX2 and AVX-512 versions are compiled with GCC or Clang on x86-64; elsewhere only the default one.
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
#define ATTNKERN_CPU_X86_CAPABILITIES 1
#else
#define ATTNKERN_CPU_X86_CAPABILITIES 0
#endif

namespace attnkern {

enum class CpuCapability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kCpuCapabilities = 3;

// The capability the kernels run with (decided on the first call).
CpuCapability cpu_capability();
// The best capability this CPU and this build support, ignoring ATTNKERN_CPU_CAPABILITY.
CpuCapability cpu_capability_supported();
const char* cpu_capability_name(CpuCapability capability);

}  // namespace attnkern
