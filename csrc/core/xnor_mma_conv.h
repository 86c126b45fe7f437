// irnet core: the tensor-core binary convolution ("mma" path), written once as a kernel
// body over an execution policy: csrc/cuda/xnor_mma.cu runs it as a CUDA kernel,
// csrc/tests/test_cuda_emulation.cpp runs the same body on the host, every thread of
// every block, with an emulated warp-level mma and emulated cp.async.
//
// Maths.  Implicit GEMM: row p of A is the im2col row of output pixel p (the kh*kw taps'
// words, zeros for taps in the padding), column o of B the weights of output channel o, both
// as bits (1 = -1), K = kh*kw*words 64-bit words.  The tensor cores give
//     P[p, o] = sum over the K words of popc(x AND w)       (mma...b1.b1.s32.and.popc)
// and the XNOR dot follows from the identity (XOR is gone on sm_90)
//     popc(x XOR w) = popc(x) + popc(w) - 2 popc(x AND w)
// summed over the in-frame taps t of p (taps in the padding contribute 0, DESIGN.md
// section 1; their A words are zero, so P already counts in-frame taps only):
//     dot[p, o] = sum_t (C - 2 popc(x_t XOR w_t))
//               = ninf(p)*C - 2*xpop(p) - 2*wpop(o, taps of p) + 4*P[p, o]
// with ninf(p) the number of in-frame taps, xpop(p) = sum over them of popc(x) (per-pixel
// popcounts, `pixel_popcount`), wpop(o, rect) the sum of popc(w) over the in-frame taps,
// a rectangle [r0,r1) x [s0,s1) of the kernel (conv_geometry.h), read from a per-channel 2-D
// prefix table of tap popcounts (`weight_tap_prefix`) with at most 4 lookups.
// Channel tails: the weights are copied once per call with the bits past C cleared
// (`prepared_weight_word`), so x's tail bits AND to 0; xpop and wpop mask them too.
// |dot| <= kh*kw*C < 2^31 (checked on the host); P, xpop, wpop are exact int32, the
// combination is formed in int64; the epilogue (conv_epilogue.h) makes the float output.
//
// Tiles (chosen for ResNet-18's 3x3 layers, 64..512 channels, at batch 64..256: every O
// there is a multiple of kBN; the first GPU run should tune them):
//   block  kBM = 128 pixels x kBN = 64 channels, 4 warps (2 x 2), each 64 x 32 =
//          4 x 4 mma tiles of 16 x 8 (64 int32 accumulators per lane);
//   K      in stages of kStageWords = 8 words (512 bits = 2 mma k-steps of 256 bits),
//          K padded with zeros to whole k-steps (3x3x64 channels: 9 words -> 3 k-steps);
//   pipe   two shared-memory stages filled by cp.async (double buffering): stage s+1 is
//          in flight while stage s is multiplied;
//   smem   A and B stages as rows of 8 words (64 bytes) with the 16-byte chunk index
//          XOR-swizzled by (row / 2) % 4 (`smem_word`): the fragment reads (8 rows x 4
//          consecutive 32-bit words per warp) hit 32 different banks.
// Loaders: thread t copies im2col row t of the stage (8 words, or 4 pairs of 16 bytes when
// words is even and x 16-byte aligned), zero-filling padding taps, K padding and pixels
// past the end; the B stage comes from the prepared weight copy (zero-padded to whole
// tiles: no bounds checks), 2 x 16 bytes per thread.  The fragment reads and the epilogue
// use the PTX fragment maps of core/mma_b1_fragments.h.
//
// Execution policy `Exec` (device: csrc/cuda/device_exec.cuh; host: csrc/tests/
// warp_emulator.h): sync() = __syncthreads(); ldg(p); cp_async8/16(dst, src, valid)
// (valid false: zero fill), cp_async_commit(), cp_async_wait<n>() (all but the n most
// recent groups landed); mma_b1_and_popc(d, a, b): d += A AND-popc B for the warp.
#pragma once

#include <cstdint>

#include "core/bitpack.h"
#include "core/gpu_conv.h"
#include "core/mma_b1_fragments.h"

namespace irnet {
namespace core {
namespace mma_conv {

constexpr int kBM = 128;           // pixels per block
constexpr int kBN = 64;            // output channels per block
constexpr int kThreads = 128;      // 4 warps
constexpr int kWarpsM = 2;         // warp grid 2 (pixels) x 2 (channels)
constexpr int kWarpM = kBM / kWarpsM;          // 64 pixels per warp
constexpr int kWarpN = kBN / (kThreads / 32 / kWarpsM);  // 32 channels per warp
constexpr int kMTiles = kWarpM / mma_b1::kM;   // 4
constexpr int kNTiles = kWarpN / mma_b1::kN;   // 4
constexpr int kStepWords = mma_b1::kK / 64;    // 4 words per mma k-step
constexpr int kStageWords = 2 * kStepWords;    // 8 words per pipeline stage
constexpr int kStages = 2;
static_assert(kBM == kThreads, "the A loader gives one im2col row to each thread");
static_assert(kBN * kStageWords == 2 * 2 * kThreads, "the B loader copies two 16-byte pairs per thread");

// Shared memory of one block (24 KiB of operand stages + 3 KiB of per-pixel terms).  The
// operand stages are 32-bit words (the fragments' unit); cp.async writes 8 or 16 bytes.
struct Shared {
  alignas(16) uint32_t a[kStages][kBM * kStageWords * 2];
  alignas(16) uint32_t b[kStages][kBN * kStageWords * 2];
  int64_t pix_out[kBM];   // output_base of the row's pixel
  int32_t pix_base[kBM];  // ninf*C - 2*xpop of the row's pixel
  int32_t pix_r0[kBM], pix_r1[kBM], pix_s0[kBM], pix_s1[kBM];  // its in-frame taps
};

struct Params {
  GpuConvShape g;
  const uint64_t* x;       // (N, H, W, words), any tail bits
  const uint64_t* wq;      // (padded_channels, padded_k_words): masked, zero padded
  const int32_t* wprefix;  // (O, (kh+1)*(kw+1)): weight_tap_prefix
  const int32_t* pixpop;   // (N*H*W): pixel_popcount
  ConvEpilogue out;
  int kp;                  // padded_k_words(g): the row stride of wq
  bool x_pairs;            // words even and x 16-byte aligned: 16-byte copies of A
};

// ---------------------------------------------------------------- launch shape, prep
IRNET_HD IRNET_INLINE int k_steps(const GpuConvShape& g) { return (g.K + kStepWords - 1) / kStepWords; }
IRNET_HD IRNET_INLINE int k_stages(const GpuConvShape& g) { return (g.K + kStageWords - 1) / kStageWords; }
IRNET_HD IRNET_INLINE int padded_k_words(const GpuConvShape& g) { return k_stages(g) * kStageWords; }
IRNET_HD IRNET_INLINE int64_t padded_channels(const GpuConvShape& g) { return (g.O + kBN - 1) / kBN * kBN; }
IRNET_HD IRNET_INLINE int64_t grid_m(const GpuConvShape& g) { return (g.npix + kBM - 1) / kBM; }  // blockIdx.x
IRNET_HD IRNET_INLINE int64_t grid_n(const GpuConvShape& g) { return (g.O + kBN - 1) / kBN; }     // blockIdx.y
IRNET_HD IRNET_INLINE int prefix_size(const GpuConvShape& g) { return (g.kh + 1) * (g.kw + 1); }

// The `auto` choice of the CUDA conv algorithm (csrc/cuda/xnor.cu): this kernel rather than
// the CUDA-core one (xnor_popc_conv.h) for a call of shape g on a GPU of compute capability
// `major`.x, when
//   * the GPU has 1-bit tensor cores: 8.x and 9.x.  (Older GPUs lack the instruction; for
//     sm_100+ ptxas turns the b1 mma into an emulation with eight IMMA.16832.U8 per mma, as
//     cuobjdump shows, which is no gain);
//   * the call has at least 2^22 binary MACs (npix * O * C * kh * kw): below that either path
//     takes a few microseconds and this path's extra prep launch dominates;
//   * its tile padding is moderate: it computes ceil(npix/128)*128 pixels x ceil(O/64)*64
//     channels x ceil(K/4)*256 bits, the CUDA-core path ceil(npix/128)*128 x ceil(O/16)*16 x
//     K*64; the tensor cores retire ~32x the binary MACs per SM cycle of the CUDA cores
//     (A100: 16384 vs ~512), so this path is taken while its padded work is below 8x the
//     other's (a margin for its prep pass and epilogue).
// A first guess from peak rates, to be replaced by measurements on a GPU.
inline bool auto_prefers_mma(const GpuConvShape& g, int major) {
  if (major != 8 && major != 9) return false;
  const double macs = static_cast<double>(g.npix) * static_cast<double>(g.O) * g.channels * g.kh * g.kw;
  if (macs < double(1 << 22)) return false;
  const double npix_pad = static_cast<double>(grid_m(g) * kBM);
  const double mma_work = npix_pad * static_cast<double>(padded_channels(g)) * (k_steps(g) * 256.0);
  const double popc_work = npix_pad * static_cast<double>((g.O + 15) / 16 * 16) * (g.K * 64.0);
  return mma_work < 8.0 * popc_work;
}

// Word k of row o of the prepared weights: w's word with the bits past C cleared; 0 in
// the padding (k >= K or o >= O).
IRNET_HD IRNET_INLINE uint64_t prepared_weight_word(const GpuConvShape& g, const uint64_t* w, int64_t o, int k) {
  if (o >= g.O || k >= g.K) return 0;
  return w[o * g.K + k] & word_mask(g, k % g.words);
}

// popc of the C valid bits of one tap's g.words words (an input pixel or a weight tap).
IRNET_HD IRNET_INLINE int32_t tap_popcount(const GpuConvShape& g, const uint64_t* tap) {
  int32_t s = 0;
  for (int j = 0; j < g.words; ++j) s += popcount64(tap[j] & word_mask(g, j));
  return s;
}

// popc of the C valid bits of input pixel `pix` (= (n*H + h)*W + w).
IRNET_HD IRNET_INLINE int32_t pixel_popcount(const GpuConvShape& g, const uint64_t* x, int64_t pix) {
  return tap_popcount(g, x + pix * g.words);
}

// out[r*(kw+1) + s] = sum over taps r' < r, s' < s of popc(w[o, r', s', :] & mask)
// (a zero first row and column), so a rectangle of taps sums in <= 4 lookups.
IRNET_HD inline void weight_tap_prefix(const GpuConvShape& g, const uint64_t* w, int64_t o, int32_t* out) {
  const int kw1 = g.kw + 1;
  for (int s = 0; s < kw1; ++s) out[s] = 0;
  for (int r = 0; r < g.kh; ++r) {
    int32_t run = 0;
    out[(r + 1) * kw1] = 0;
    for (int s = 0; s < g.kw; ++s) {
      run += tap_popcount(g, w + o * g.K + (static_cast<int64_t>(r) * g.kw + s) * g.words);
      out[(r + 1) * kw1 + s + 1] = out[r * kw1 + s + 1] + run;
    }
  }
}

// popc(w) over the taps [r0,r1) x [s0,s1) of channel o (its prefix row `pre`).
IRNET_HD IRNET_INLINE int32_t rect_sum(const int32_t* pre, int kw1, int r0, int r1, int s0, int s1) {
  int32_t v = pre[r1 * kw1 + s1];
  if (r0 > 0) v -= pre[r0 * kw1 + s1];
  if (s0 > 0) v -= pre[r1 * kw1 + s0];
  if (r0 > 0 && s0 > 0) v += pre[r0 * kw1 + s0];
  return v;
}

// ---------------------------------------------------------------- shared-memory layout
// 64-bit word w (0..7) of tile row `row` of a stage: 16-byte chunk w/2 XOR (row/2)%4.
IRNET_HD constexpr int smem_word(int row, int w) {
  return row * kStageWords + ((((w >> 1) ^ ((row >> 1) & 3)) << 1) | (w & 1));
}
// 32-bit word k32 (0..15) of a row: the low half of 64-bit word k32/2 holds its first 32
// channels (little endian, as the packed layout: channel c at bit c % 64).
IRNET_HD constexpr int smem_u32(int row, int k32) { return 2 * smem_word(row, k32 >> 1) + (k32 & 1); }

// ---------------------------------------------------------------- fragment loads
// The A fragment of the 16 x 256 tile whose first row is tile row `row0`, k-step `step`
// (0 or 1) of a stage, for lane `lane`: register r is 32-bit word a_reg_k32 of row a_reg_row.
IRNET_HD IRNET_INLINE void load_a_fragment(const uint32_t* stage, int row0, int step, int lane,
                                           uint32_t (&a)[mma_b1::kARegs]) {
  IRNET_UNROLL
  for (int r = 0; r < mma_b1::kARegs; ++r)
    a[r] = stage[smem_u32(row0 + mma_b1::a_reg_row(lane, r), step * 8 + mma_b1::a_reg_k32(lane, r))];
}
// The B fragment of the 256 x 8 tile whose first column is channel row `col0` of the B stage.
IRNET_HD IRNET_INLINE void load_b_fragment(const uint32_t* stage, int col0, int step, int lane,
                                           uint32_t (&b)[mma_b1::kBRegs]) {
  IRNET_UNROLL
  for (int r = 0; r < mma_b1::kBRegs; ++r)
    b[r] = stage[smem_u32(col0 + mma_b1::b_reg_col(lane, r), step * 8 + mma_b1::b_reg_k32(lane, r))];
}

// ---------------------------------------------------------------- A loader
// The im2col row of one pixel, word by word: tap (r, s), word j of the tap, flat word k.
struct RowCursor {
  bool valid;       // the pixel exists
  int64_t xbase;    // n*H*W*words
  int64_t h0, w0;   // ho*sh - ph, wo*sw - pw
  int r, s, j, k;
};

// The cursor at word 0 of the row of pixel p, at position q = pixel_position(g, p).
IRNET_HD IRNET_INLINE RowCursor row_cursor(const GpuConvShape& g, int64_t p, const PixelPos& q) {
  RowCursor c{};
  c.valid = p < g.npix;
  if (c.valid) {
    c.xbase = q.n * g.H * g.W * g.words;
    c.h0 = q.ho * g.sh - g.ph;
    c.w0 = q.wo * g.sw - g.pw;
  }
  return c;
}

// Index into x of the cursor's word, or -1 for a zero (padding tap, k >= K, no pixel).
IRNET_HD IRNET_INLINE int64_t cursor_source(const GpuConvShape& g, const RowCursor& c) {
  if (!c.valid || c.k >= g.K) return -1;
  const int64_t hi = c.h0 + static_cast<int64_t>(c.r) * g.dh;
  const int64_t wi = c.w0 + static_cast<int64_t>(c.s) * g.dw;
  if (hi < 0 || hi >= g.H || wi < 0 || wi >= g.W) return -1;
  return c.xbase + (hi * g.W + wi) * g.words + c.j;
}

// Moves the cursor `step` words on (step divides words, so a tap ends on a step boundary).
IRNET_HD IRNET_INLINE void cursor_advance(const GpuConvShape& g, RowCursor& c, int step) {
  c.k += step;
  c.j += step;
  if (c.j >= g.words) {
    c.j = 0;
    if (++c.s == g.kw) {
      c.s = 0;
      ++c.r;
    }
  }
}

// ---------------------------------------------------------------- the kernel body
template <class Exec>
IRNET_KERNEL_BODY void load_stage(Exec& ex, Shared& sh, const Params& P, RowCursor& cur, int64_t n0, int stage,
                                  int tid) {
  const int buf = stage & 1;
  // A: row tid, words stage*8 .. stage*8+7 (the cursor is at stage*8)
  if (P.x_pairs) {
    IRNET_UNROLL
    for (int w = 0; w < kStageWords; w += 2) {
      const int64_t src = cursor_source(P.g, cur);
      ex.cp_async16(&sh.a[buf][2 * smem_word(tid, w)], P.x + (src >= 0 ? src : 0), src >= 0);
      cursor_advance(P.g, cur, 2);
    }
  } else {
    IRNET_UNROLL
    for (int w = 0; w < kStageWords; ++w) {
      const int64_t src = cursor_source(P.g, cur);
      ex.cp_async8(&sh.a[buf][2 * smem_word(tid, w)], P.x + (src >= 0 ? src : 0), src >= 0);
      cursor_advance(P.g, cur, 1);
    }
  }
  // B: 16-byte pairs i = tid, tid + kThreads: channel row i/4, words 2*(i%4), +1
  for (int i = tid; i < kBN * kStageWords / 2; i += kThreads) {
    const int row = i >> 2, w = 2 * (i & 3);
    ex.cp_async16(&sh.b[buf][2 * smem_word(row, w)], P.wq + (n0 + row) * P.kp + stage * kStageWords + w, true);
  }
}

template <bool kFused, bool kChannelsLast, class Exec>
IRNET_KERNEL_BODY void conv_block(Exec& ex, Shared& sh, const Params& P, int64_t bm, int64_t bn, int tid) {
  namespace F = mma_b1;
  const GpuConvShape& g = P.g;
  const int64_t m0 = bm * kBM, n0 = bn * kBN;
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = warp % kWarpsM, wn = warp / kWarpsM;
  const int nstages = k_stages(g), nsteps = k_steps(g);

  // Row tid's pixel (p >= npix: no pixel; q is then unused).
  const int64_t p = m0 + tid;
  const PixelPos q = pixel_position(g, p);
  RowCursor cur = row_cursor(g, p, q);
  load_stage(ex, sh, P, cur, n0, 0, tid);
  ex.cp_async_commit();

  // Per-pixel terms of row tid, while stage 0 is in flight (read by other threads in the
  // epilogue: the barriers of the main loop order these writes before those reads).
  {
    int32_t base = 0;
    TapRect rect{0, 0, 0, 0};
    int64_t out = 0;
    if (cur.valid) {
      rect = tap_rect(g, q);
      int32_t xpop = 0;
      for (int r = rect.r0; r < rect.r1; ++r) {
        // cur.h0 = ho*sh - ph and cur.w0 = wo*sw - pw (row_cursor; load_stage moves only r, s, j, k)
        const int64_t hrow = (q.n * g.H + cur.h0 + static_cast<int64_t>(r) * g.dh) * g.W;
        for (int s = rect.s0; s < rect.s1; ++s)
          xpop += ex.ldg(P.pixpop + hrow + cur.w0 + static_cast<int64_t>(s) * g.dw);
      }
      // |ninf*C - 2*xpop| <= ninf*C < 2^31, but 2*xpop alone may not fit in int32
      base = static_cast<int32_t>(static_cast<int64_t>(rect.r1 - rect.r0) * (rect.s1 - rect.s0) * g.channels -
                                  2 * static_cast<int64_t>(xpop));
      out = output_base<kChannelsLast>(g, p, q);
    }
    sh.pix_base[tid] = base;
    sh.pix_out[tid] = out;
    sh.pix_r0[tid] = rect.r0, sh.pix_r1[tid] = rect.r1, sh.pix_s0[tid] = rect.s0, sh.pix_s1[tid] = rect.s1;
  }

  int acc[kMTiles][kNTiles][F::kCRegs];
  IRNET_UNROLL
  for (int mi = 0; mi < kMTiles; ++mi)
    IRNET_UNROLL
    for (int ni = 0; ni < kNTiles; ++ni)
      IRNET_UNROLL
      for (int r = 0; r < F::kCRegs; ++r) acc[mi][ni][r] = 0;

  for (int stage = 0; stage < nstages; ++stage) {
    if (stage + 1 < nstages) {
      load_stage(ex, sh, P, cur, n0, stage + 1, tid);  // into the other buffer
      ex.cp_async_commit();
      ex.template cp_async_wait<1>();  // this thread's copies of `stage` have landed
    } else {
      ex.template cp_async_wait<0>();
    }
    ex.sync();  // ... and every thread's
    const uint32_t* As = sh.a[stage & 1];
    const uint32_t* Bs = sh.b[stage & 1];
    IRNET_UNROLL
    for (int step = 0; step < 2; ++step) {
      if (2 * stage + step >= nsteps) break;  // the last stage may hold one k-step
      uint32_t af[kMTiles][F::kARegs], bf[kNTiles][F::kBRegs];
      IRNET_UNROLL
      for (int mi = 0; mi < kMTiles; ++mi) load_a_fragment(As, wm * kWarpM + mi * F::kM, step, lane, af[mi]);
      IRNET_UNROLL
      for (int ni = 0; ni < kNTiles; ++ni) load_b_fragment(Bs, wn * kWarpN + ni * F::kN, step, lane, bf[ni]);
      IRNET_UNROLL
      for (int mi = 0; mi < kMTiles; ++mi)
        IRNET_UNROLL
        for (int ni = 0; ni < kNTiles; ++ni) ex.mma_b1_and_popc(acc[mi][ni], af[mi], bf[ni]);
    }
    ex.sync();  // the buffer of `stage` is free for stage + 2
  }

  // Epilogue: C register r of tile (mi, ni) is pixel row / channel column (c_row, c_col).
  const int kw1 = g.kw + 1;
  const int64_t ostride = output_channel_stride<kChannelsLast>(g);
  IRNET_UNROLL
  for (int mi = 0; mi < kMTiles; ++mi) {
    IRNET_UNROLL
    for (int r = 0; r < F::kCRegs; ++r) {
      const int row = wm * kWarpM + mi * F::kM + F::c_row(lane, r);
      if (m0 + row >= g.npix) continue;
      const int64_t base = sh.pix_base[row];
      const int64_t out0 = sh.pix_out[row];
      const int r0 = sh.pix_r0[row], r1 = sh.pix_r1[row], s0 = sh.pix_s0[row], s1 = sh.pix_s1[row];
      IRNET_UNROLL
      for (int ni = 0; ni < kNTiles; ++ni) {
        const int64_t o = n0 + wn * kWarpN + ni * F::kN + F::c_col(lane, r);
        if (o >= g.O) continue;
        const int32_t wpop = rect_sum(P.wprefix + o * prefix_size(g), kw1, r0, r1, s0, s1);
        const int64_t dot = base - 2 * static_cast<int64_t>(wpop) + 4 * static_cast<int64_t>(acc[mi][ni][r]);
        const int64_t off = out0 + o * ostride;
        P.out.y[off] = conv_output_value<kFused>(P.out, dot, o, off);
      }
    }
  }
}

}  // namespace mma_conv
}  // namespace core
}  // namespace irnet
