// Host emulation of a CUDA thread block: the scheduler that both host emulations of irnet's
// CUDA kernels run on (tests only; no GPU, no CUDA toolkit).  Two front-ends sit on it:
//   * cuda_host_emulation.h: CUDA source compiled as host C++ through macros (threadIdx,
//     __syncthreads(), __syncwarp(), __shared__ ...), for csrc/cuda/libra_pb_kernels.cuh;
//   * warp_emulator.h: the execution policy `ex` of the kernel bodies written over one
//     (csrc/core/xnor_popc_conv.h, xnor_mma_conv.h): ex.sync(), cp.async, the warp's mma.
//
// The model.  Every CUDA thread of a block is a fiber: a function with its own stack (POSIX
// ucontext, a guard page below it), run on the calling OS thread.  One fiber runs at a time
// and gives way only at a synchronisation point, or when it returns:
//   * the block barrier (__syncthreads, ex.sync()): the fiber waits until all threads of the
//     block have arrived;
//   * the warp barrier (__syncwarp) and warp collectives (mma.sync): it waits until the 32
//     lanes of its warp have arrived (at the same kind of operation: lanes that meet at
//     different ones are an error); the last lane to arrive computes the collective's
//     result for the whole warp, then the lanes are released.
// The last arriver yields too, so after every barrier the schedule alone decides who runs
// first.  Between two synchronisation points a fiber runs alone, so everything it writes is
// visible at once to every fiber that runs after it, and a run is reproducible from its
// order and seed.  The order picks the next runnable fiber:
//   * shuffled:   in rounds, each runnable fiber once per round, a fresh random permutation
//                 every round (a different interleaving at every barrier phase);
//   * ascending / descending: rounds in thread order (warps stay in step);
//   * greedy_low / greedy_high: after every yield the lowest / highest runnable thread: one
//                 warp runs ahead of the others as far as the barriers let it.  This is what
//                 exposes a missing barrier between two uses of a shared buffer (the leading
//                 warp refills it while the others still read it), which round orders,
//                 keeping everyone in step, can miss.
// A read of another thread's shared-memory write with no barrier between them sees the old
// value in some of these orders, and the kernel's output then differs from the reference.
// No single order catches every missing barrier, so the tests run each kernel under several.
// When no fiber can run but some have not finished, some barrier is one that not every
// thread reaches (a divergent __syncthreads, or a thread that returned while others wait:
// undefined on a GPU): reported as a deadlock, the stuck fibers abandoned.
//
// Errors (deadlocks and mixed warp collectives here; bad addresses and the like in the
// front-ends) are counted in `errors`, the first ones printed (exceptions cannot cross
// fiber stacks).
//
// Not emulated: blocks of a launch run one after another (no races between blocks, no grid
// synchronisation); only blockDim.x (1-D blocks) and whole warps (blockDim.x a multiple of
// 32); full-mask __syncwarp only; the GPU memory model beyond barriers (a write is visible
// to later fibers at once, so a missing __threadfence or `volatile` is not caught); timing,
// bank conflicts, occupancy.  A stack overflow hits the guard page (SIGSEGV).
//
// Why fibers rather than one std::thread per CUDA thread: a fiber switch costs a fraction
// of a microsecond, 256 OS threads meeting at a barrier about a millisecond on a busy
// 2-core machine; and the order of a run is the test's choice, not the OS's.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

namespace irnet_test {

enum class Order { shuffled, ascending, descending, greedy_low, greedy_high };
inline constexpr Order kAllOrders[] = {Order::shuffled, Order::ascending, Order::descending, Order::greedy_low,
                                       Order::greedy_high};
inline const char* order_name(Order o) {
  switch (o) {
    case Order::shuffled: return "shuffled";
    case Order::ascending: return "ascending";
    case Order::descending: return "descending";
    case Order::greedy_low: return "greedy_low";
    case Order::greedy_high: return "greedy_high";
  }
  return "?";
}

// What a warp's lanes meet at (all 32 must meet at the same kind).
enum class WarpOp { sync, mma };

class BlockScheduler {
 public:
  static constexpr int kWarpSize = 32;
  static constexpr size_t kStackBytes = 256 * 1024;

  BlockScheduler(int threads, Order order, uint64_t seed)
      : threads_(threads), order_(order), rng_(seed), fibers_(static_cast<size_t>(threads)),
        warps_(static_cast<size_t>((threads + kWarpSize - 1) / kWarpSize)),
        ready_(static_cast<size_t>((threads + 63) / 64)) {
    if (threads <= 0 || threads % kWarpSize != 0) {
      std::fprintf(stderr, "BlockScheduler: %d threads per block (whole warps only)\n", threads);
      std::abort();
    }
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (Fiber& f : fibers_) {
      void* p = mmap(nullptr, kStackBytes + page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        std::perror("BlockScheduler: mmap of a fiber stack");
        std::abort();
      }
      mprotect(p, page_, PROT_NONE);  // the guard page: stacks grow down onto it
      f.stack = static_cast<char*>(p);
    }
  }
  ~BlockScheduler() {
    for (Fiber& f : fibers_) munmap(f.stack, kStackBytes + page_);
  }
  BlockScheduler(const BlockScheduler&) = delete;
  BlockScheduler& operator=(const BlockScheduler&) = delete;

  void set_order(Order order) { order_ = order; }
  int threads() const { return threads_; }
  std::mt19937_64& rng() { return rng_; }

  // The scheduler whose fiber is running (for front-ends that cannot pass it along).
  static BlockScheduler& active() { return *active_; }
  // The thread index of the running fiber.
  int current_thread() const { return current_; }

  // Runs body(tid) for every thread of one block, to completion or to a deadlock.
  void run_block(const std::function<void(int)>& body) {
    body_ = &body;
    active_ = this;
    block_arrived_ = 0;
    for (Warp& w : warps_) w.arrived = 0;
    for (int t = 0; t < threads_; ++t) {
      Fiber& f = fibers_[static_cast<size_t>(t)];
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack + page_;
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = &scheduler_;
      makecontext(&f.ctx, &BlockScheduler::entry, 0);
      f.wait = Wait::none;
      set_ready(t, true);
    }
    std::vector<int> round(static_cast<size_t>(threads_));
    for (int t = 0; t < threads_; ++t) round[static_cast<size_t>(t)] = order_ == Order::descending ? threads_ - 1 - t : t;
    int finished = 0;
    while (finished < threads_) {
      bool progressed = false;
      if (order_ == Order::greedy_low || order_ == Order::greedy_high) {
        const int t = order_ == Order::greedy_low ? lowest_ready() : highest_ready();
        if (t >= 0) {
          finished += resume(t);
          progressed = true;
        }
      } else {
        if (order_ == Order::shuffled) std::shuffle(round.begin(), round.end(), rng_);
        for (const int t : round) {
          if (!is_ready(t)) continue;
          finished += resume(t);
          progressed = true;
        }
      }
      if (!progressed) {
        fail("deadlock in block %d (order %s): no thread can run, %d of %d finished (a barrier or warp collective "
             "that not every thread reaches)", blocks_run_, order_name(order_), finished, threads_);
        break;  // the stuck fibers are abandoned; the next block makes fresh contexts
      }
    }
    ++blocks_run_;
    active_ = nullptr;
  }

  // __syncthreads(): every thread of the block.
  void sync_block() {
    const int t = current_;
    block_arrived_++;
    wait_here(t, Wait::block);
    if (block_arrived_ == threads_) {
      block_arrived_ = 0;
      release(0, threads_, Wait::block);
    }
    yield();
  }

  // The 32 lanes of the calling thread's warp meet at `op`; the last lane to arrive calls
  // on_complete(warp) (the collective's work for the whole warp) before they are released.
  template <class OnComplete>
  void warp_collective(WarpOp op, OnComplete&& on_complete) {
    const int t = current_, w = t / kWarpSize;
    Warp& warp = warps_[static_cast<size_t>(w)];
    if (warp.arrived == 0) {
      warp.op = op;
      warp.mixed = false;
    } else if (warp.op != op) {
      warp.mixed = true;
    }
    warp.arrived++;
    wait_here(t, Wait::warp);
    if (warp.arrived == kWarpSize) {
      warp.arrived = 0;
      if (warp.mixed)  // no result: the lanes' operands are not all there
        fail("block %d warp %d: its lanes met at different warp-collective operations", blocks_run_, w);
      else
        on_complete(w);
      release(w * kWarpSize, (w + 1) * kWarpSize, Wait::warp);
    }
    yield();
  }
  // __syncwarp(mask): the calling thread's warp (full mask only).
  void sync_warp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) fail("__syncwarp(0x%08x): only the full mask is emulated", mask);
    warp_collective(WarpOp::sync, [](int) {});
  }

  int errors = 0;
  bool verbose = true;  // print the first failures (a test that expects failures turns it off)

  template <class... A>
  void fail(const char* fmt, A... args) {
    if (errors++ < 10 && verbose) {
      std::printf("EMULATION FAIL: ");
      std::printf(fmt, args...);
      std::printf("\n");
    }
  }

 private:
  enum class Wait : uint8_t { none, block, warp };
  struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;  // guard page, then kStackBytes
    Wait wait = Wait::none;
    bool finished = false;
  };
  struct Warp {
    int arrived = 0;
    WarpOp op = WarpOp::sync;  // of the first lane to arrive
    bool mixed = false;        // a later lane arrived at another op
  };

  static void entry() {
    BlockScheduler& s = *active_;
    const int t = s.current_;
    (*s.body_)(t);
    s.fibers_[static_cast<size_t>(t)].finished = true;
    // returning resumes uc_link, the scheduler
  }

  // Runs fiber t until it yields or returns; 1 if it returned.
  int resume(int t) {
    Fiber& f = fibers_[static_cast<size_t>(t)];
    f.finished = false;
    current_ = t;
    swapcontext(&scheduler_, &f.ctx);
    if (!f.finished) return 0;
    set_ready(t, false);
    return 1;
  }
  void yield() { swapcontext(&fibers_[static_cast<size_t>(current_)].ctx, &scheduler_); }

  void wait_here(int t, Wait w) {
    fibers_[static_cast<size_t>(t)].wait = w;
    set_ready(t, false);
  }
  void release(int first, int end, Wait w) {
    for (int t = first; t < end; ++t) {
      Fiber& f = fibers_[static_cast<size_t>(t)];
      if (f.wait != w) continue;
      f.wait = Wait::none;
      set_ready(t, true);
    }
  }

  // The runnable threads as a bit set (greedy orders find the lowest / highest in O(words)).
  void set_ready(int t, bool on) {
    uint64_t& word = ready_[static_cast<size_t>(t / 64)];
    const uint64_t bit = uint64_t(1) << (t % 64);
    word = on ? word | bit : word & ~bit;
  }
  bool is_ready(int t) const { return (ready_[static_cast<size_t>(t / 64)] >> (t % 64)) & 1u; }
  int lowest_ready() const {
    for (size_t i = 0; i < ready_.size(); ++i)
      if (ready_[i]) return static_cast<int>(64 * i) + std::countr_zero(ready_[i]);
    return -1;
  }
  int highest_ready() const {
    for (size_t i = ready_.size(); i-- > 0;)
      if (ready_[i]) return static_cast<int>(64 * i) + 63 - std::countl_zero(ready_[i]);
    return -1;
  }

  int threads_;
  Order order_;
  std::mt19937_64 rng_;
  std::vector<Fiber> fibers_;
  std::vector<Warp> warps_;
  std::vector<uint64_t> ready_;
  int block_arrived_ = 0;
  size_t page_ = 4096;
  ucontext_t scheduler_{};
  const std::function<void(int)>* body_ = nullptr;
  int current_ = 0;
  int blocks_run_ = 0;
  static inline BlockScheduler* active_ = nullptr;
};

}  // namespace irnet_test
