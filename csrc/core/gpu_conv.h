// irnet core: the problem description shared by the two CUDA binary convolutions
// (csrc/core/xnor_popc_conv.h on CUDA cores, csrc/core/xnor_mma_conv.h on tensor cores)
// and their host emulation (csrc/tests/test_cuda_emulation.cpp).
//
// Operands (the layout of csrc/core/bitpack.h): x (N, H, W, words) and w (O, kh, kw,
// words) uint64 words of sign bits (1 = -1), words = ceil(C/64); the bits of the last
// word past C may be anything (the kernels mask them).  Output pixel p = (n*Ho + ho)*Wo + wo,
// output channel o; its tap (r, s) reads input row hi = ho*sh - ph + r*dh, column
// wi = wo*sw - pw + s*dw, and taps outside the image sit in the zero padding: they
// contribute 0 (DESIGN.md section 1).  A linear layer is the case H = W = kh = kw = 1.
// Output: float32 (N, O, Ho, Wo), NCHW or channels_last memory order.
//
// Torch-free, CUDA-free (IRNET_HD).
#pragma once

#include <cstdint>

#include "core/bitpack.h"
#include "core/common.h"
#include "core/conv_epilogue.h"
#include "core/conv_geometry.h"

namespace irnet {
namespace core {

struct GpuConvShape {
  int64_t N, H, W, Ho, Wo, O;
  int64_t npix;      // N * Ho * Wo
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int words;         // ceil(C / 64)
  int K;             // kh * kw * words: 64-bit words per im2col row (kh*kw*64*words < 2^31, checked)
  int channels;      // C
  uint64_t tail;     // valid bits of each tap's last word
};

// The shape of a conv of x (N, C, H, W) with O filters kh x kw, stride (sh, sw), padding
// (ph, pw), dilation (dh, dw); a linear layer passes H = W = kh = kw = 1, stride and
// dilation 1, padding 0.  The caller has checked that the output is not empty and that
// the int fields fit (csrc/cuda/xnor.cu).
IRNET_HD inline GpuConvShape make_gpu_conv_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t kh,
                                                 int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                                 int64_t dh, int64_t dw) {
  GpuConvShape g{};
  g.N = N, g.H = H, g.W = W, g.O = O;
  g.Ho = conv_out_size(H, kh, sh, ph, dh);
  g.Wo = conv_out_size(W, kw, sw, pw, dw);
  g.npix = N * g.Ho * g.Wo;
  g.kh = static_cast<int>(kh), g.kw = static_cast<int>(kw);
  g.sh = static_cast<int>(sh), g.sw = static_cast<int>(sw);
  g.ph = static_cast<int>(ph), g.pw = static_cast<int>(pw);
  g.dh = static_cast<int>(dh), g.dw = static_cast<int>(dw);
  const int64_t words = num_words(C);
  g.words = static_cast<int>(words);
  g.K = static_cast<int>(kh * kw * words);
  g.channels = static_cast<int>(C);
  g.tail = tail_mask(C);
  return g;
}

struct PixelPos {
  int64_t n, ho, wo;
};

IRNET_HD IRNET_INLINE PixelPos pixel_position(const GpuConvShape& g, int64_t p) {
  const int64_t t = p / g.Wo;
  return {t / g.Ho, t % g.Ho, p % g.Wo};
}

// In-frame taps of a pixel: rows [r0, r1) x columns [s0, s1) (conv_geometry.h)
struct TapRect {
  int r0, r1, s0, s1;
};

IRNET_HD IRNET_INLINE TapRect tap_rect(const GpuConvShape& g, const PixelPos& q) {
  const TapRange rr = tap_range(q.ho, g.kh, g.sh, g.ph, g.dh, g.H);
  const TapRange cc = tap_range(q.wo, g.kw, g.sw, g.pw, g.dw, g.W);
  return {static_cast<int>(rr.t0), static_cast<int>(rr.t1), static_cast<int>(cc.t0), static_cast<int>(cc.t1)};
}

// Output element of (pixel p at q, channel o) = output_base(p) + o * output_channel_stride.
template <bool kChannelsLast>
IRNET_HD IRNET_INLINE int64_t output_base(const GpuConvShape& g, int64_t p, const PixelPos& q) {
  return kChannelsLast ? p * g.O : (q.n * g.O * g.Ho + q.ho) * g.Wo + q.wo;
}
template <bool kChannelsLast>
IRNET_HD IRNET_INLINE int64_t output_channel_stride(const GpuConvShape& g) {
  return kChannelsLast ? int64_t(1) : g.Ho * g.Wo;
}

// Valid-bit mask of word j of a tap.
IRNET_HD IRNET_INLINE uint64_t word_mask(const GpuConvShape& g, int j) { return j == g.words - 1 ? g.tail : ~uint64_t(0); }

}  // namespace core
}  // namespace irnet
