// irnet core: the CUDA-core XNOR-popcount convolution ("popc" path), written once as a
// kernel body over an execution policy: csrc/cuda/xnor.cu runs it as a CUDA kernel,
// csrc/tests/test_cuda_emulation.cpp replays every (block, thread) of a launch on the
// host with an emulating policy.
//
// Maths.  For output pixel p and channel o (csrc/core/gpu_conv.h for the indexing), over
// the C real channels of an in-frame tap the +-1 dot product is C - 2*popcount(x ^ w)
// counting only the valid bits (the tail word is masked, so garbage past C never counts);
// taps in the zero padding contribute 0.  So
//     dot[p, o] = ninf(p) * C - 2 * sum_{in-frame taps, words} popc((x ^ w) & mask)
// with ninf(p) the number of in-frame taps.  |dot| <= kh*kw*C < 2^31 (checked on the host),
// so the int32 accumulators are exact; the epilogue (core/conv_epilogue.h) turns dot into
// the float output, fused or not, NCHW or channels_last.
//
// Tiles (implicit GEMM on CUDA cores): M = N*Ho*Wo output pixels, N_gemm = O channels,
// K = kh*kw*words words.  A block of kThreads threads owns kThreads pixels (one per thread)
// x kQ output channels.  K is walked in chunks of kKC words; each chunk of the kQ
// channels' weight words is staged in shared memory as wtile[k][q] (q fastest), so every
// thread of a warp reads the same words (a broadcast, no bank conflict), and each input
// word loaded from global memory serves kQ xor-popcounts.  The padding is handled per
// (pixel, tap) by skipping the tap, so no border correction is needed.
//
// Execution policy `Exec` (device: csrc/cuda/device_exec.cuh; host: csrc/tests/
// warp_emulator.h): ex.sync() is __syncthreads(), ex.ldg(p) a read-only global load.
#pragma once

#include <cstdint>

#include "core/bitpack.h"
#include "core/gpu_conv.h"

namespace irnet {
namespace core {
namespace popc_conv {

constexpr int kThreads = 128;  // pixels per block (one per thread)
constexpr int kQ = 16;         // output channels per block (accumulators per thread)
constexpr int kKC = 128;       // weight words per channel staged per chunk: 16 KiB shared

struct Shared {
  alignas(16) uint64_t wtile[kKC * kQ];
};

struct Params {
  GpuConvShape g;
  const uint64_t* x;  // (N, H, W, words)
  const uint64_t* w;  // (O, kh, kw, words) = (O, K)
  ConvEpilogue out;
  int64_t ctiles;     // channel tiles, ceil(O / kQ)
};

IRNET_HD IRNET_INLINE int64_t channel_tiles(const GpuConvShape& g) { return (g.O + kQ - 1) / kQ; }
// Blocks of a launch: blockIdx.x = pixel_tile * ctiles + channel_tile (the channel tiles
// of one pixel tile are neighbours in launch order, so they share the input words in L1/L2).
IRNET_HD IRNET_INLINE int64_t grid_blocks(const GpuConvShape& g) {
  return (g.npix + kThreads - 1) / kThreads * channel_tiles(g);
}

template <bool kFused, bool kChannelsLast, class Exec>
IRNET_KERNEL_BODY void conv_block(Exec& ex, Shared& sh, const Params& P, int64_t block, int tid) {
  const GpuConvShape& g = P.g;
  const int64_t ptile = block / P.ctiles;
  const int64_t o0 = (block - ptile * P.ctiles) * kQ;
  const int64_t pix = ptile * kThreads + tid;
  const bool active = pix < g.npix;
  const PixelPos q = active ? pixel_position(g, pix) : PixelPos{0, 0, 0};
  const int64_t h0 = q.ho * g.sh - g.ph;
  const int64_t w0 = q.wo * g.sw - g.pw;
  const uint64_t* xn = P.x + q.n * g.H * g.W * g.words;

  int acc[kQ];
  IRNET_UNROLL
  for (int c = 0; c < kQ; ++c) acc[c] = 0;

  for (int k0 = 0; k0 < g.K; k0 += kKC) {
    const int kc = g.K - k0 < kKC ? g.K - k0 : kKC;
    ex.sync();  // the previous chunk is no longer read
    // Stage wtile[kl][c] = w[o0 + c, k0 + kl] (0 for channels past O: computed, never stored).
    for (int i = tid; i < kc * kQ; i += kThreads) {
      const int c = i % kQ;
      const int kl = i / kQ;
      const int64_t o = o0 + c;
      sh.wtile[i] = o < g.O ? ex.ldg(P.w + o * g.K + k0 + kl) : uint64_t(0);
    }
    ex.sync();
    if (active) {
      // Walk the flat k range [k0, k0 + kc) tap by tap: word wd of tap `tap`.
      int tap = k0 / g.words;
      int wd = k0 - tap * g.words;
      int k = k0;
      while (k < k0 + kc) {
        const int wend = g.words < wd + (k0 + kc - k) ? g.words : wd + (k0 + kc - k);
        const int r = tap / g.kw;
        const int s = tap - r * g.kw;
        const int64_t hi = h0 + static_cast<int64_t>(r) * g.dh;
        const int64_t wi = w0 + static_cast<int64_t>(s) * g.dw;
        if (hi >= 0 && hi < g.H && wi >= 0 && wi < g.W) {
          const uint64_t* xp = xn + (hi * g.W + wi) * g.words;
          const uint64_t* srow = sh.wtile + (k - k0) * kQ;  // staged row of word wd of this tap
          for (int j = wd; j < wend; ++j) {
            const uint64_t xv = ex.ldg(xp + j);
            const uint64_t m = word_mask(g, j);
            const uint64_t* row = srow + (j - wd) * kQ;
IRNET_UNROLL
            for (int c = 0; c < kQ; ++c) acc[c] += popcount64((xv ^ row[c]) & m);
          }
        }
        k += wend - wd;
        ++tap;
        wd = 0;
      }
    }
  }
  if (!active) return;

  const TapRect rect = tap_rect(g, q);
  const int64_t base = static_cast<int64_t>(rect.r1 - rect.r0) * (rect.s1 - rect.s0) * g.channels;
  const int64_t out0 = output_base<kChannelsLast>(g, pix, q);
  const int64_t ostride = output_channel_stride<kChannelsLast>(g);
IRNET_UNROLL
  for (int c = 0; c < kQ; ++c) {
    const int64_t o = o0 + c;
    if (o < g.O) {
      const int64_t off = out0 + o * ostride;
      P.out.y[off] = conv_output_value<kFused>(P.out, base - 2 * static_cast<int64_t>(acc[c]), o, off);
    }
  }
}

}  // namespace popc_conv
}  // namespace core
}  // namespace irnet
