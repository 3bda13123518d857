// Kernels that test the emulated device's warp collectives (csrc/emulation, common/warp_mma.cuh), built
// into the emulated library only and called by tests/test_emulator.py as torch.ops.attnkern_warp_tests.*:
// shuffles, mma.sync.m16n8k16 and ldmatrix against fragment layouts written out here from the PTX ISA
// (the emulator holds the inverse maps), and the errors of collectives that not every lane reaches.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "common/warp_mma.cuh"

namespace attnkern {
namespace warp_tests {
namespace {

// out[thread] = the value of the lane that __shfl_xor_sync(…, lane_mask) or __shfl_sync(…, lane_mask)
// reads, with `width`; every thread offers its own x[thread].
template <typename T>
__global__ void shuffle_kernel(const T* __restrict__ x, T* __restrict__ out, int lane_mask, int width, bool xor_lanes) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  out[i] = xor_lanes ? __shfl_xor_sync(0xffffffffu, x[i], lane_mask, width)
                     : __shfl_sync(0xffffffffu, x[i], lane_mask, width);
}

at::Tensor shuffle(const at::Tensor& x_in, int64_t lane_mask, int64_t width, bool xor_lanes) {
  auto x = x_in.contiguous();
  auto out = at::empty_like(x);
  AT_DISPATCH_ALL_TYPES(x.scalar_type(), "shuffle", [&] {
    ATTNKERN_LAUNCH(x.size(0), x.size(1), 0, c10::cuda::getCurrentCUDAStream(), shuffle_kernel<scalar_t>)(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<int>(lane_mask),
        static_cast<int>(width), xor_lanes);
  });
  return out;
}

// d = a·b + c for a [16, 16], b [16, 8], c [16, 8] (float), one warp, fragments built from the PTX ISA's
// (register → row, column) maps.
template <typename T>
__global__ void mma_kernel(const T* __restrict__ a, const T* __restrict__ b, const float* __restrict__ c,
                           float* __restrict__ d) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t a_frag[4], b_frag[2];
  for (int reg = 0; reg < 4; ++reg) {  // A: rows g, g + 8, g, g + 8; columns 2t (+ 8 for registers 2, 3)
    const int row = g + 8 * (reg % 2), col = 2 * t + 8 * (reg / 2);
    a_frag[reg] = tensor_core::pack<T>(a[row * 16 + col], a[row * 16 + col + 1]);
  }
  for (int reg = 0; reg < 2; ++reg) {  // B: rows 2t, 2t + 1 (+ 8 for register 1), column g
    const int row = 2 * t + 8 * reg;
    b_frag[reg] = tensor_core::pack<T>(b[row * 8 + g], b[(row + 1) * 8 + g]);
  }
  float acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
  tensor_core::mma_m16n8k16<T>(acc, a_frag, b_frag);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = acc[i];
}

at::Tensor mma(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& c_in) {
  TORCH_CHECK(a_in.sizes() == at::IntArrayRef({16, 16}) && b_in.sizes() == at::IntArrayRef({16, 8}) &&
              c_in.sizes() == at::IntArrayRef({16, 8}) && c_in.scalar_type() == at::kFloat);
  auto a = a_in.contiguous(), b = b_in.contiguous().to(a.scalar_type()), c = c_in.contiguous();
  auto d = at::empty_like(c);
  AT_DISPATCH_REDUCED_FLOATING_TYPES(a.scalar_type(), "mma", [&] {
    ATTNKERN_LAUNCH(1, 32, 0, c10::cuda::getCurrentCUDAStream(), mma_kernel<scalar_t>)(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), c.const_data_ptr<float>(),
        d.mutable_data_ptr<float>());
  });
  return d;
}

// ldmatrix of `count` 8×8 matrices of x ([8·count, 8] 16-bit values, matrix m in rows 8m … 8m + 7) from
// shared memory (rows 24 elements apart, as a padded tile would be); out[lane, m] = register m's two elements.
template <int count, bool transpose>
__global__ void ldmatrix_kernel(const int16_t* __restrict__ x, int16_t* __restrict__ out) {
  alignas(16) __shared__ int16_t tile[32 * 24];
  const int lane = threadIdx.x;
  for (int e = lane; e < 8 * count * 8; e += 32) tile[(e / 8) * 24 + e % 8] = x[e];
  __syncwarp();
  uint32_t r[count];
  tensor_core::ldmatrix<count, transpose>(r, &tile[(lane % (8 * count)) * 24]);
  for (int m = 0; m < count; ++m) {
    out[(lane * count + m) * 2] = static_cast<int16_t>(r[m] & 0xFFFF);
    out[(lane * count + m) * 2 + 1] = static_cast<int16_t>(r[m] >> 16);
  }
}

at::Tensor ldmatrix(const at::Tensor& x_in, int64_t count, bool transpose) {
  auto x = x_in.contiguous();
  TORCH_CHECK(x.scalar_type() == at::kShort && x.sizes() == at::IntArrayRef({8 * count, 8}));
  auto out = at::empty({32, count, 2}, x.options());
  auto launch = [&](auto kernel) {
    ATTNKERN_LAUNCH(1, 32, 0, c10::cuda::getCurrentCUDAStream(), kernel)(x.const_data_ptr<int16_t>(),
                                                                          out.mutable_data_ptr<int16_t>());
  };
  if (count == 1) transpose ? launch(ldmatrix_kernel<1, true>) : launch(ldmatrix_kernel<1, false>);
  else if (count == 2) transpose ? launch(ldmatrix_kernel<2, true>) : launch(ldmatrix_kernel<2, false>);
  else transpose ? launch(ldmatrix_kernel<4, true>) : launch(ldmatrix_kernel<4, false>);
  return out;
}

// Collectives that not every lane reaches, or that the emulator does not run.
__global__ void broken_collective_kernel(float* __restrict__ out, int how) {
  float v = threadIdx.x;
  switch (how) {
    case 0:  // lane 5 returns before the shuffle
      if (threadIdx.x % 32 == 5) return;
      v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 1:  // lane 0 waits at the block barrier while its warp shuffles
      if (threadIdx.x == 0) __syncthreads();
      else v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 2:  // a partial mask
      v = __shfl_xor_sync(0x0000ffffu, v, 1);
      break;
    default:  // every thread syncs its warp: fine in full warps only
      __syncwarp();
  }
  out[threadIdx.x] = v;
}

void broken_collective(int64_t how, int64_t threads) {
  auto out = at::zeros({threads}, at::kFloat);
  ATTNKERN_LAUNCH(1, threads, 0, c10::cuda::getCurrentCUDAStream(), broken_collective_kernel)(
      out.mutable_data_ptr<float>(), static_cast<int>(how));
}

}  // namespace

TORCH_LIBRARY(attnkern_warp_tests, m) {
  m.def("shuffle(Tensor x, int lane_mask, int width, bool xor_lanes) -> Tensor", &shuffle);
  m.def("mma(Tensor a, Tensor b, Tensor c) -> Tensor", &mma);
  m.def("ldmatrix(Tensor x, int count, bool transpose) -> Tensor", &ldmatrix);
  m.def("broken_collective(int how, int threads) -> ()", &broken_collective);
}

}  // namespace warp_tests
}  // namespace attnkern
