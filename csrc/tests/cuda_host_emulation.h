// Runs CUDA kernel source as host C++: enough of the CUDA programming model for the
// block-level kernels of irnet (csrc/cuda/libra_pb_kernels.cuh) to execute on a machine
// without a GPU, so that the ctest runs the kernels' own code.
//
// Model: every CUDA thread of a block is a fiber (its own stack, POSIX ucontext) on the
// calling thread; a scheduler resumes the runnable fibers one by one, in a fresh random
// order at every sweep, and each runs until it reaches a barrier or returns:
//   * __syncthreads() blocks the fiber until every thread of the block has arrived (the
//     barrier counts all blockDim.x threads: a thread that returns while others wait
//     there is a deadlock, reported and fatal, as a divergent barrier is UB on a GPU);
//   * __syncwarp() does the same for the 32 threads of the caller's warp (the kernels
//     here call it from whole warps only);
//   * __shared__ becomes `static`: one array per kernel instantiation, which is one array
//     per block because the blocks of a launch run one after the other (as on a GPU that
//     holds one block at a time); it is NOT cleared between blocks, like shared memory;
//   * threadIdx, blockIdx, blockDim, gridDim are variables the scheduler sets before it
//     resumes a fiber; __global__, __device__, __host__, __launch_bounds__ vanish.
// Because every fiber runs alone up to its next barrier and the order changes at every
// sweep, a read of another thread's shared-memory write that lacks a barrier between
// them sees the stale value in some sweep order: the comparison with the CPU then fails.
// (Why not one std::thread per CUDA thread: 256 OS threads meeting at a barrier cost
// about a millisecond per barrier on a busy 2-core machine; a fiber switch costs a
// fraction of a microsecond, which keeps the ctest at a few seconds.)
//
// Device-only intrinsics that irnet's headers guard with __CUDA_ARCH__ (the _rn
// arithmetic of core/libra_pb.h) take their host branch, the same IEEE operations.
// Include this before the kernel header, and only in test programs.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <vector>

namespace cuda_host_emulation {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// What the kernel code sees of the fiber that is running.
inline Dim3 thread_index, block_index, block_dim, grid_dim;

class BlockScheduler {
 public:
  static constexpr size_t kStackBytes = 64 * 1024;
  static constexpr unsigned kWarp = 32;

  explicit BlockScheduler(unsigned threads, uint64_t seed)
      : threads_(threads), fibers_(threads), warp_arrived_(threads / kWarp), warp_gen_(threads / kWarp), rng_(seed) {
    for (auto& f : fibers_) f.stack = std::make_unique<char[]>(kStackBytes);
  }

  // Runs body() once per thread of one block, to completion.
  void run_block(const std::function<void()>& body) {
    body_ = &body;
    block_arrived_ = 0;
    std::fill(warp_arrived_.begin(), warp_arrived_.end(), 0u);
    for (unsigned t = 0; t < threads_; ++t) {
      Fiber& f = fibers_[t];
      f.done = false;
      f.wait = Wait::kNone;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = &scheduler_;
      makecontext(&f.ctx, &BlockScheduler::entry, 0);
    }
    std::vector<unsigned> order(threads_);
    for (unsigned t = 0; t < threads_; ++t) order[t] = t;
    for (unsigned finished = 0; finished < threads_;) {
      std::shuffle(order.begin(), order.end(), rng_);
      bool progressed = false;
      for (const unsigned t : order) {
        Fiber& f = fibers_[t];
        if (f.done || blocked(f, t)) continue;
        f.wait = Wait::kNone;
        current_ = t;
        thread_index = {t, 0, 0};
        active_ = this;
        swapcontext(&scheduler_, &f.ctx);
        progressed = true;
        if (f.done) ++finished;
      }
      if (!progressed) {
        std::fprintf(stderr, "cuda_host_emulation: deadlock in block %u: a barrier that not every thread reaches\n",
                     block_index.x);
        std::abort();
      }
    }
  }

  void syncthreads() { arrive(block_arrived_, block_gen_, threads_, Wait::kBlock); }
  void syncwarp() {
    const unsigned w = current_ / kWarp;
    arrive(warp_arrived_[w], warp_gen_[w], kWarp, Wait::kWarp);
  }

  static BlockScheduler& active() { return *active_; }

 private:
  enum class Wait { kNone, kBlock, kWarp };
  struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    bool done = false;
    Wait wait = Wait::kNone;
    uint64_t wait_gen = 0;
  };

  static void entry() {
    BlockScheduler& s = *active_;
    (*s.body_)();
    s.fibers_[s.current_].done = true;  // uc_link returns to the scheduler
  }

  bool blocked(const Fiber& f, unsigned t) const {
    if (f.wait == Wait::kBlock) return f.wait_gen == block_gen_;
    if (f.wait == Wait::kWarp) return f.wait_gen == warp_gen_[t / kWarp];
    return false;
  }

  // The last of `members` to arrive opens the barrier (a new generation) and runs on;
  // the others go back to the scheduler until their generation has passed.
  void arrive(unsigned& arrived, uint64_t& gen, unsigned members, Wait kind) {
    if (++arrived == members) {
      arrived = 0;
      ++gen;
      return;
    }
    Fiber& f = fibers_[current_];
    f.wait = kind;
    f.wait_gen = gen;
    swapcontext(&f.ctx, &scheduler_);
  }

  unsigned threads_;
  std::vector<Fiber> fibers_;
  ucontext_t scheduler_{};
  const std::function<void()>* body_ = nullptr;
  unsigned current_ = 0;
  unsigned block_arrived_ = 0;
  uint64_t block_gen_ = 0;
  std::vector<unsigned> warp_arrived_;
  std::vector<uint64_t> warp_gen_;
  std::mt19937_64 rng_;
  static inline BlockScheduler* active_ = nullptr;
};

// Seed of the schedulers' sweep orders (the test sets it from its own seed).
inline uint64_t schedule_seed = 1;

// kernel<<<grid, threads>>>(args...) for a 1-D grid of 1-D blocks (threads a multiple of 32).
template <class Kernel, class... Args>
void launch(unsigned grid, unsigned threads, Kernel kernel, Args... args) {
  BlockScheduler scheduler(threads, schedule_seed++);
  block_dim = {threads, 1, 1};
  grid_dim = {grid, 1, 1};
  const std::function<void()> body = [&] { kernel(args...); };
  for (unsigned b = 0; b < grid; ++b) {
    block_index = {b, 0, 0};
    scheduler.run_block(body);
  }
}

}  // namespace cuda_host_emulation

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define threadIdx (::cuda_host_emulation::thread_index)
#define blockIdx (::cuda_host_emulation::block_index)
#define blockDim (::cuda_host_emulation::block_dim)
#define gridDim (::cuda_host_emulation::grid_dim)
#define __syncthreads() ::cuda_host_emulation::BlockScheduler::active().syncthreads()
#define __syncwarp(...) ::cuda_host_emulation::BlockScheduler::active().syncwarp()
