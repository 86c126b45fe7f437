// CUDA kernel source compiled as host C++: the macro front-end of cuda_block_emulator.h (the
// model, the schedule orders and what is not emulated are explained there).  For the
// block-level kernels of irnet that are plain CUDA source (csrc/cuda/libra_pb_kernels.cuh):
//   * threadIdx is the running fiber's thread; blockIdx, blockDim, gridDim are set by launch;
//   * __syncthreads() / __syncwarp() are the scheduler's block / warp barriers;
//   * __shared__ becomes `static`: one array per kernel instantiation, which is one array per
//     block because the blocks of a launch run one after the other; like shared memory, it
//     is NOT cleared between blocks;
//   * __global__, __device__, __host__, __launch_bounds__ vanish.
// Device-only intrinsics that irnet's headers guard with __CUDA_ARCH__ (the _rn arithmetic
// of core/libra_pb.h) take their host branch, the same IEEE operations.
// Include this before the kernel header, and only in test programs.
#pragma once

#include <cstdint>
#include <functional>

#include "cuda_block_emulator.h"

namespace cuda_host_emulation {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline Dim3 block_index, block_dim, grid_dim;
inline Dim3 thread_index() {
  return {static_cast<unsigned>(irnet_test::BlockScheduler::active().current_thread()), 0, 0};
}

// Seed of the schedules (the test sets it from its own seed); each launch takes the next.
inline uint64_t schedule_seed = 1;
inline unsigned launches = 0;

// kernel<<<grid, threads>>>(args...) for a 1-D grid of 1-D blocks (threads a multiple of 32).
// Block b runs in order kAllOrders[(c + b) % 5], c counting the launches, so every order
// runs in every launch of 5 or more blocks, and in turn at block 0 of successive launches.
// Returns the number of emulation errors (deadlocks), printed as they happen.
template <class Kernel, class... Args>
int launch(unsigned grid, unsigned threads, Kernel kernel, Args... args) {
  const unsigned first_order = launches++;
  irnet_test::BlockScheduler scheduler(static_cast<int>(threads), irnet_test::Order::shuffled, schedule_seed++);
  block_dim = {threads, 1, 1};
  grid_dim = {grid, 1, 1};
  const std::function<void(int)> body = [&](int) { kernel(args...); };
  constexpr unsigned kOrders = sizeof(irnet_test::kAllOrders) / sizeof(irnet_test::kAllOrders[0]);
  for (unsigned b = 0; b < grid; ++b) {
    block_index = {b, 0, 0};
    scheduler.set_order(irnet_test::kAllOrders[(first_order + b) % kOrders]);
    scheduler.run_block(body);
  }
  return scheduler.errors;
}

}  // namespace cuda_host_emulation

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define threadIdx (::cuda_host_emulation::thread_index())
#define blockIdx (::cuda_host_emulation::block_index)
#define blockDim (::cuda_host_emulation::block_dim)
#define gridDim (::cuda_host_emulation::grid_dim)
#define __syncthreads() ::irnet_test::BlockScheduler::active().sync_block()
#define __syncwarp(...) ::irnet_test::BlockScheduler::active().sync_warp(__VA_ARGS__)
