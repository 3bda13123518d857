// at::parallel_for for bodies that call ATen ops.
//
// OpenMP worker threads do not inherit the calling thread's thread-local state: in a kernel reached
// from autograd, the caller runs below the Autograd dispatch keys, a worker does not, and an ATen op
// such as at::mm_out on inputs that require grad then fails ("out=... arguments don't support automatic
// differentiation"). Each chunk here runs under the caller's state.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <cstdint>

namespace attnkern {

template <typename F>
void parallel_for_aten(int64_t begin, int64_t end, int64_t grain_size, const F& body) {
  const at::ThreadLocalState caller_state;
  at::parallel_for(begin, end, grain_size, [&](int64_t chunk_begin, int64_t chunk_end) {
    at::ThreadLocalStateGuard guard(caller_state);
    body(chunk_begin, chunk_end);
  });
}

}  // namespace attnkern
