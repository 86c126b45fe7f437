// The execution-policy front-end of cuda_block_emulator.h (the model, the schedule orders and
// what is not emulated are explained there): HostExec is the host counterpart of
// csrc/cuda/device_exec.cuh, the policy `ex` that irnet's kernel bodies are written over
// (csrc/core/xnor_popc_conv.h, csrc/core/xnor_mma_conv.h).  What it adds to the scheduler:
//   * ex.sync() is the block barrier;
//   * ex.mma_b1_and_popc() is a warp collective: when the 32 lanes have arrived, D = C + A
//     AND-popc B is computed from their registers with the semantics documented by PTX
//     (emulate_mma_m16n8k256_and_popc), element by element through the fragment maps of
//     csrc/core/mma_b1_fragments.h;
//   * cp.async lands either at issue (Landing::early: catches a copy that overwrites data
//     other threads still read) or only at the cp.async.wait_group that forces it
//     (Landing::late: catches a read before the wait / barrier that makes the data visible);
//   * shared memory starts filled with garbage; global reads (ldg, cp.async sources) must
//     fall inside the buffers the test registers, with the alignment the instruction needs;
//     copies must be waited for before the thread ends.  Violations count as errors.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include "core/mma_b1_fragments.h"
#include "cuda_block_emulator.h"

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
    uint32_t* dst;  // nullptr once landed
    int bytes;
    unsigned char data[16];
  };
  void copy(uint32_t* dst, const void* src, int bytes, bool valid);
  void wait_groups(int pending);
  BlockEmulator* blk_;
  int tid_;
  std::vector<Copy> open_;                 // issued, not yet committed
  std::vector<std::vector<Copy>> groups_;  // committed, not yet waited for
  // this lane's operands while its warp gathers at an mma
  int* mma_d_ = nullptr;
  const uint32_t* mma_a_ = nullptr;
  const uint32_t* mma_b_ = nullptr;
};

class BlockEmulator : public BlockScheduler {
 public:
  BlockEmulator(int threads, Order order, Landing landing, uint64_t seed = 1)
      : BlockScheduler(threads, order, seed), landing_(landing) {}

  // Global buffers the kernel may read (ldg, cp.async sources).
  void allow_reads(const void* p, size_t bytes) { ranges_.push_back({static_cast<const unsigned char*>(p), bytes}); }

  // Runs body(ex, tid) for every thread of one block, with `shared` (of `bytes`) as the
  // block's shared memory (filled with garbage first).
  void run_block(void* shared, size_t bytes, const std::function<void(HostExec&, int)>& body) {
    shared_ = static_cast<unsigned char*>(shared);
    shared_bytes_ = bytes;
    for (size_t i = 0; i < bytes; ++i) shared_[i] = static_cast<unsigned char>(rng()() | 1u);
    execs_.clear();
    execs_.reserve(static_cast<size_t>(threads()));
    for (int t = 0; t < threads(); ++t) execs_.emplace_back(this, t);
    BlockScheduler::run_block([&](int tid) {
      HostExec& ex = execs_[static_cast<size_t>(tid)];
      body(ex, tid);
      if (!ex.open_.empty() || !ex.groups_.empty()) fail("thread %d ended with cp.async copies never waited for", tid);
    });
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

  void warp_mma(HostExec& ex, int* d, const uint32_t* a, const uint32_t* b) {
    ex.mma_d_ = d, ex.mma_a_ = a, ex.mma_b_ = b;
    warp_collective(WarpOp::mma, [&](int warp) {
      uint32_t ar[32][4], br[32][2];
      int cr[32][4], dr[32][4];
      for (int l = 0; l < 32; ++l) {
        const HostExec& lane = execs_[static_cast<size_t>(warp * 32 + l)];
        std::memcpy(ar[l], lane.mma_a_, sizeof ar[l]);
        std::memcpy(br[l], lane.mma_b_, sizeof br[l]);
        std::memcpy(cr[l], lane.mma_d_, sizeof cr[l]);
      }
      emulate_mma_m16n8k256_and_popc(ar, br, cr, dr);
      for (int l = 0; l < 32; ++l) std::memcpy(execs_[static_cast<size_t>(warp * 32 + l)].mma_d_, dr[l], sizeof dr[l]);
    });
  }

  Landing landing_;
  std::vector<HostExec> execs_;
  std::vector<std::pair<const unsigned char*, size_t>> ranges_;
  unsigned char* shared_ = nullptr;
  size_t shared_bytes_ = 0;
};

inline void HostExec::sync() { blk_->sync_block(); }

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
    for (const Copy& c : groups_.front())
      if (c.dst != nullptr) std::memcpy(c.dst, c.data, static_cast<size_t>(c.bytes));
    groups_.erase(groups_.begin());
  }
}

inline void HostExec::mma_b1_and_popc(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  blk_->warp_mma(*this, d, a, b);
}

}  // namespace irnet_test
