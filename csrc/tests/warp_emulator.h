// Host emulation of a CUDA thread block, for running irnet's kernel bodies
// (csrc/core/xnor_popc_conv.h, csrc/core/xnor_mma_conv.h) on a machine without a GPU.
//
// Every CUDA thread of the block is a fiber (ucontext) with its own stack; one fiber runs
// at a time and gives way only at a synchronisation point, so a run is deterministic and
// the schedule is chosen by the test:
//   * ex.sync()             (__syncthreads) blocks until every thread of the block has
//                           arrived;
//   * ex.mma_b1_and_popc()  (mma.sync, warp-collective) blocks until the 32 lanes of the
//                           warp have arrived, then computes D = C + A AND-popc B from the
//                           32 lanes' registers with the semantics documented by PTX
//                           (`emulate_mma_m16n8k256_and_popc`), element by element through
//                           the fragment maps of csrc/core/mma_b1_fragments.h;
//   * cp.async              lands either at issue (Landing::early: catches a copy that
//                           overwrites data other threads still read) or only at the
//                           cp.async.wait_group that forces it (Landing::late: catches a
//                           read before the wait / barrier that makes the data visible);
//   * Order                 which runnable fiber runs next: in rounds (every runnable
//                           fiber once, by ascending / descending index or a seeded
//                           shuffle: warps stay in step), or greedily (after every switch
//                           the lowest / highest runnable index: one warp runs ahead of the
//                           others as far as the barriers let it, which exposes a missing
//                           __syncthreads between two uses of a shared buffer).
// Shared memory starts filled with garbage.  Global reads (ldg, cp.async sources) must fall
// inside the buffers the test registers, with the alignment the instruction needs; the
// emulator records every violation, a deadlock (a barrier some thread never reaches, e.g.
// a divergent __syncthreads) and copies never waited for.  Failures are counted in
// `errors` with a message (no exceptions: they cannot cross fiber stacks).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/mma_b1_fragments.h"

namespace irnet_test {

// The PTX semantics of mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc for the
// whole warp: a[lane][r], b[lane][r], c[lane][r] the lanes' registers; returns d[lane][r].
//     D[i][j] = C[i][j] + sum_{k < 256} (A[i][k] AND B[k][j])
// A, B, C, D are assembled from / scattered to the lanes with the element-level fragment
// maps (element i of a register vector: bit i%32 of register i/32, "low to high").
inline void emulate_mma_m16n8k256_and_popc(const uint32_t a[32][4], const uint32_t b[32][2], const int c[32][4],
                                           int d[32][4]) {
  namespace F = irnet::core::mma_b1;
  uint8_t A[F::kM][F::kK], B[F::kK][F::kN];
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 32 * F::kARegs; ++i) A[F::a_row(lane, i)][F::a_col(lane, i)] = (a[lane][i / 32] >> (i % 32)) & 1u;
    for (int i = 0; i < 32 * F::kBRegs; ++i) B[F::b_row(lane, i)][F::b_col(lane, i)] = (b[lane][i / 32] >> (i % 32)) & 1u;
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < F::kCRegs; ++i) {
      const int row = F::c_row(lane, i), col = F::c_col(lane, i);
      int sum = 0;
      for (int k = 0; k < F::kK; ++k) sum += A[row][k] & B[k][col];
      d[lane][i] = c[lane][i] + sum;
    }
  }
}

enum class Order { ascending, descending, shuffled, greedy_low, greedy_high };
enum class Landing { early, late };

class BlockEmulator;

// The execution policy handed to a kernel body: one per emulated thread.
class HostExec {
 public:
  HostExec(BlockEmulator* blk, int tid) : blk_(blk), tid_(tid) {}
  void sync();
  template <class T>
  T ldg(const T* p);
  void cp_async8(uint32_t* dst, const void* src, bool valid) { copy(dst, src, 8, valid); }
  void cp_async16(uint32_t* dst, const void* src, bool valid) { copy(dst, src, 16, valid); }
  void cp_async_commit();
  template <int pending>
  void cp_async_wait() {
    wait_groups(pending);
  }
  void mma_b1_and_popc(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

 private:
  friend class BlockEmulator;
  struct Copy {
    uint32_t* dst;
    int bytes;
    unsigned char data[16];
  };
  void copy(uint32_t* dst, const void* src, int bytes, bool valid);
  void wait_groups(int pending);
  BlockEmulator* blk_;
  int tid_;
  std::vector<Copy> open_;                 // issued, not yet committed
  std::vector<std::vector<Copy>> groups_;  // committed, not yet landed (Landing::late)
};

class BlockEmulator {
 public:
  BlockEmulator(int threads, Order order, Landing landing, uint64_t seed = 1)
      : threads_(threads), order_(order), landing_(landing), rng_(seed), fibers_(static_cast<size_t>(threads)) {
    for (Fiber& f : fibers_) f.stack.resize(kStackBytes);
  }

  // Global buffers the kernel may read (ldg, cp.async sources).
  void allow_reads(const void* p, size_t bytes) {
    ranges_.push_back({static_cast<const unsigned char*>(p), bytes});
  }

  // Runs body(ex, tid) for every thread of one block, with `shared` (of `bytes`) as the
  // block's shared memory (filled with garbage first).
  void run_block(void* shared, size_t bytes, const std::function<void(HostExec&, int)>& body) {
    shared_ = static_cast<unsigned char*>(shared);
    shared_bytes_ = bytes;
    for (size_t i = 0; i < bytes; ++i) shared_[i] = static_cast<unsigned char>(rng_() | 1u);
    body_ = &body;
    block_arrived_ = 0;
    for (auto& w : warps_) w.arrived = 0;
    execs_.clear();
    execs_.reserve(static_cast<size_t>(threads_));
    for (int t = 0; t < threads_; ++t) execs_.emplace_back(this, t);
    for (int t = 0; t < threads_; ++t) {
      Fiber& f = fibers_[static_cast<size_t>(t)];
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &main_;
      const uintptr_t self = reinterpret_cast<uintptr_t>(this);
      makecontext(&f.ctx, reinterpret_cast<void (*)()>(&BlockEmulator::entry), 3, static_cast<unsigned>(self),
                  static_cast<unsigned>(self >> 32), t);
      f.state = State::ready;
    }
    std::vector<int> order(static_cast<size_t>(threads_));
    for (int t = 0; t < threads_; ++t) order[static_cast<size_t>(t)] = order_ == Order::descending ? threads_ - 1 - t : t;
    const bool greedy = order_ == Order::greedy_low || order_ == Order::greedy_high;
    if (order_ == Order::greedy_high) std::reverse(order.begin(), order.end());
    int done = 0;
    while (done < threads_) {
      if (order_ == Order::shuffled) std::shuffle(order.begin(), order.end(), rng_);
      bool progressed = false;
      for (int t : order) {
        Fiber& f = fibers_[static_cast<size_t>(t)];
        if (f.state != State::ready) continue;
        current_ = t;
        f.state = State::running;
        swapcontext(&main_, &f.ctx);
        progressed = true;
        if (f.state == State::running) {  // returned from the body
          f.state = State::done;
          ++done;
          finish_thread(t);
        }
        if (greedy) break;  // rescan from the first index in priority order
      }
      if (!progressed) {
        fail("deadlock: no thread can run (a barrier or mma some threads never reach); %d of %d threads done",
             done, threads_);
        return;  // the stuck fibers are abandoned (their stacks are reused by the next block)
      }
    }
    if (block_arrived_ != 0) fail("block barrier left with %d arrivals", block_arrived_);
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

  bool readable(const void* p, size_t bytes) const {
    const unsigned char* q = static_cast<const unsigned char*>(p);
    for (const auto& r : ranges_)
      if (q >= r.first && q + bytes <= r.first + r.second) return true;
    return false;
  }
  bool in_shared(const void* p, size_t bytes) const {
    const unsigned char* q = static_cast<const unsigned char*>(p);
    return q >= shared_ && q + bytes <= shared_ + shared_bytes_;
  }
  Landing landing() const { return landing_; }

 private:
  friend class HostExec;
  static constexpr size_t kStackBytes = 256 * 1024;
  enum class State { ready, running, barrier, warp, done };
  struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    State state = State::done;
  };
  struct WarpSlot {
    int arrived = 0;
    int* d[32];
    const uint32_t* a[32];
    const uint32_t* b[32];
  };

  static void entry(unsigned lo, unsigned hi, int tid) {
    BlockEmulator* self = reinterpret_cast<BlockEmulator*>(static_cast<uintptr_t>(lo) | (static_cast<uintptr_t>(hi) << 32));
    (*self->body_)(self->execs_[static_cast<size_t>(tid)], tid);
    // returning switches to uc_link (main_) with the fiber still marked running
  }

  void yield(State s) {
    Fiber& f = fibers_[static_cast<size_t>(current_)];
    if (f.state == State::running) f.state = s;
    swapcontext(&f.ctx, &main_);
  }

  void block_sync(int tid) {
    fibers_[static_cast<size_t>(tid)].state = State::barrier;
    if (++block_arrived_ == threads_) {
      block_arrived_ = 0;
      for (Fiber& f : fibers_) f.state = State::ready;
    }
    yield(State::barrier);
  }

  void warp_mma(int tid, int* d, const uint32_t* a, const uint32_t* b) {
    const int warp = tid / 32, lane = tid % 32;
    if (warp >= static_cast<int>(sizeof(warps_) / sizeof(warps_[0]))) {
      fail("warp %d out of range", warp);
      return;
    }
    WarpSlot& w = warps_[warp];
    w.d[lane] = d, w.a[lane] = a, w.b[lane] = b;
    fibers_[static_cast<size_t>(tid)].state = State::warp;
    if (++w.arrived == 32) {
      uint32_t ar[32][4], br[32][2];
      int cr[32][4], dr[32][4];
      for (int l = 0; l < 32; ++l) {
        std::memcpy(ar[l], w.a[l], sizeof ar[l]);
        std::memcpy(br[l], w.b[l], sizeof br[l]);
        std::memcpy(cr[l], w.d[l], sizeof cr[l]);
      }
      emulate_mma_m16n8k256_and_popc(ar, br, cr, dr);
      for (int l = 0; l < 32; ++l) {
        std::memcpy(w.d[l], dr[l], sizeof dr[l]);
        fibers_[static_cast<size_t>(warp * 32 + l)].state = State::ready;
      }
      w.arrived = 0;
    }
    yield(State::warp);
  }

  void finish_thread(int tid) {
    HostExec& ex = execs_[static_cast<size_t>(tid)];
    if (!ex.open_.empty() || !ex.groups_.empty())
      fail("thread %d ended with cp.async copies never waited for", tid);
  }

  int threads_;
  Order order_;
  Landing landing_;
  std::mt19937_64 rng_;
  std::vector<Fiber> fibers_;
  std::vector<HostExec> execs_;
  std::vector<std::pair<const unsigned char*, size_t>> ranges_;
  ucontext_t main_;
  int current_ = 0;
  int block_arrived_ = 0;
  WarpSlot warps_[32];
  unsigned char* shared_ = nullptr;
  size_t shared_bytes_ = 0;
  const std::function<void(HostExec&, int)>* body_ = nullptr;
};

inline void HostExec::sync() { blk_->block_sync(tid_); }

template <class T>
T HostExec::ldg(const T* p) {
  if (!blk_->readable(p, sizeof(T))) {
    blk_->fail("thread %d: ldg outside the kernel's buffers (%p)", tid_, static_cast<const void*>(p));
    return T{};
  }
  return *p;
}

inline void HostExec::copy(uint32_t* dst, const void* src, int bytes, bool valid) {
  if (!blk_->in_shared(dst, static_cast<size_t>(bytes)) || reinterpret_cast<uintptr_t>(dst) % bytes != 0) {
    blk_->fail("thread %d: cp.async of %d bytes to a bad shared address", tid_, bytes);
    return;
  }
  Copy c{dst, bytes, {}};
  if (valid) {
    if (!blk_->readable(src, static_cast<size_t>(bytes)) || reinterpret_cast<uintptr_t>(src) % bytes != 0) {
      blk_->fail("thread %d: cp.async of %d bytes from a bad global address %p", tid_, bytes, src);
      return;
    }
    std::memcpy(c.data, src, static_cast<size_t>(bytes));
  }
  if (blk_->landing() == Landing::early) {
    std::memcpy(c.dst, c.data, static_cast<size_t>(c.bytes));
    c.dst = nullptr;  // landed; kept (empty) so that the commit / wait bookkeeping still runs
  }
  open_.push_back(c);
}

inline void HostExec::cp_async_commit() {
  groups_.push_back(std::move(open_));
  open_.clear();
}

inline void HostExec::wait_groups(int pending) {
  while (static_cast<int>(groups_.size()) > pending) {
    std::vector<Copy> g = std::move(groups_.front());
    groups_.erase(groups_.begin());
    for (const Copy& c : g)
      if (c.dst != nullptr) std::memcpy(c.dst, c.data, static_cast<size_t>(c.bytes));
  }
}

inline void HostExec::mma_b1_and_popc(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  blk_->warp_mma(tid_, d, a, b);
}

}  // namespace irnet_test
