// irnet CPU: the XNOR-popcount kernels, one set per SIMD level, behind a table of
// function pointers chosen at run time.  Torch-free (the unit test in
// csrc/tests/test_core.cpp links it without libtorch); threading and argument checks
// live in csrc/cpu/xnor_cpu.cpp.
//
// Levels: "avx512" (avx512f + avx512bw + avx512vpopcntdq: VPOPCNTQ), "avx2" (+f16c:
// the pshufb nibble-table popcount), "scalar" (POPCNT instruction where the CPU has
// it, the portable bit-twiddling count otherwise).
#pragma once

#include <cstddef>
#include <cstdint>

namespace irnet {
namespace cpu {

// A convolution (or a linear layer: H = W = kh = kw = 1) on packed operands.
//   x:       (N, H, W, words) packed activations, contiguous
//   wpanel:  weights re-laid for the inner loop: [panel][k][split][NR] words, with
//            k over L = kh*kw*words (the row of w_bits (O, kh, kw, words)) and
//            output channel o = panel*NR + lane (lanes past O hold zeros)
//   wrect:   2-D prefix sums over the taps of popcount(w[o, i, j, :]), laid out
//            ((kh+1)*(kw+1), opad) with opad = ceil(O/nr)*nr (zeros past O): the
//            padding correction (see conv_block)
//   out:     float32 (N, O, Ho, Wo), contiguous (NCHW) or, with out_cl, channels_last
//            (memory order N, Ho, Wo, O)
struct ConvProblem {
  const uint64_t* x = nullptr;
  // The float32 activations, contiguous NCHW or (xf_cl) channels_last, where a kernel packs
  // them itself instead of reading x (the planes kernel, xnor_planes.h); null otherwise.
  const float* xf = nullptr;
  bool xf_cl = false;
  int64_t N = 0, H = 0, W = 0, words = 0, C = 0;
  const uint64_t* wpanel = nullptr;
  const int32_t* wrect = nullptr;  // int32: a dot has < 2^31 terms (checked by the driver)
  int64_t O = 0, kh = 1, kw = 1;
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int64_t Ho = 0, Wo = 0;
  const float* scale = nullptr;  // (opad,) (zeros past O) or null
  const float* ones = nullptr;   // (opad,) of 1.0f, used where scale is null
  float* out = nullptr;
  bool out_cl = false;
  // Fused epilogue (irnet::xnor_conv2d_fused), when alpha is set: every output becomes
  //   y = clamp((y * alpha[o] + beta[o]) + residual, lo, hi)
  // (one rounding per operation, in this order; NaN propagates), with residual laid out
  // like out, or absent (null).  alpha and beta have O entries.
  const float* alpha = nullptr;
  const float* beta = nullptr;
  const float* residual = nullptr;
  float lo = 0.0f, hi = 0.0f;
  // Direct path (RowsLayout), when xs is set: conv_block reads the taps from xs at
  // xoff instead of building im2col rows from x.
  const uint64_t* xs = nullptr;
  const int64_t* xoff = nullptr;
};

struct LevelKernels {
  const char* name;
  int nr;        // output channels per weight panel
  int mr;        // output pixels per register tile
  int split;     // stored words per packed word in the weight panels (2: nibble halves)
  // Computes out[m, o] for output pixels m in [m0, m1) (flattened n, ho, wo) and
  // output channels of panels [p0, p1).  scratch: conv_scratch_words(P, m1 - m0) words.
  void (*conv_block)(const ConvProblem& P, int64_t m0, int64_t m1, int64_t p0, int64_t p1, uint64_t* scratch);
  // Packs n <= 64 contiguous values into one word, bit i = (p[i] < 0).
  uint64_t (*neg_mask_f32)(const float* p, int64_t n);
  uint64_t (*neg_mask_f64)(const double* p, int64_t n);
  uint64_t (*neg_mask_f16)(const uint16_t* p, int64_t n);   // IEEE half bits
  uint64_t (*neg_mask_bf16)(const uint16_t* p, int64_t n);  // bfloat16 bits
  // Packs a float32 NCHW block: channels [0, nc) (nc <= 64, plane stride P) x pixels
  // [0, np) (np <= 64) from src (channel 0, pixel 0 of the block) into one word per pixel,
  // dst[j * words], bit c = (src[c*P + j] < 0).
  void (*pack_block_f32)(const float* src, int64_t P, int64_t nc, int64_t np, uint64_t* dst, int64_t words);
  // Throughput probe: runs the register tile over L1-resident operands `iters`
  // times with `k` words per dot; returns the number of word XOR-popcounts done.
  int64_t (*peak_probe)(int64_t k, int64_t iters, uint64_t* sink);
  // Fills padded rows [r0, r1) (of N*Hp) of the direct path's activation copy xs
  // (RowsLayout below).
  void (*prep_rows)(const ConvProblem& P, int64_t r0, int64_t r1, uint64_t* xs);
};

// The direct path (no im2col): the activations once per call as zero-padded rows of
// stored-form words, xs[n][hp][wp][words][split], hp = h + ph, wp = w + pw.  Output pixel
// (n, ho, wo) then reads tap (i, j), word c at
//   xs + (n*Hp + ho*sh)*row + wo*sw*pix + xoff[k],   k = (i*kw + j)*words + c,
//   xoff[k] = i*dh*row + j*dw*pix + c*split,
// a zero word where the tap is padding (as the im2col rows had).
struct RowsLayout {
  int64_t Hp, Wp, pix, row, total;  // padded sizes; strides in words of a pixel and a row; total words
};
RowsLayout rows_layout(const ConvProblem& P, int split);
// xoff[k] for k < kh*kw*words (see RowsLayout).
void rows_offsets(const ConvProblem& P, int split, int64_t* xoff);
// Per output pixel of a conv_block: where its output goes and which taps are in frame.
struct RowInfo {
  int64_t kin;                 // C * (number of in-frame taps): the length of this dot
  int64_t out_base;            // n*O*Ho*Wo + ho*Wo + wo (NCHW), ((n*Ho + ho)*Wo + wo)*O (out_cl)
  int64_t border;              // 0: all taps in frame
  int64_t s11, s01, s10, s00;  // wrect rows of the in-frame rectangle [i0,i1) x [j0,j1)
  int64_t run;                 // pixels r, r+1, .. consecutive in one output image from here
};

// conv_block's scratch for a block of `rows` output pixels, carved from
// conv_scratch_words(P, rows) words: the staged results ybuf[rows][kMaxNR] (floats),
// the RowInfo and tile-row pointer of every pixel, and the im2col patch rows (up to 2
// stored words per word of a row; used only without the padded copy).
constexpr int64_t kMaxNR = 16;
struct ConvScratch {
  float* ybuf;
  RowInfo* info;
  const uint64_t** base;
  uint64_t* patch;
};
int64_t conv_scratch_words(const ConvProblem& P, int64_t rows);
ConvScratch conv_scratch(uint64_t* scratch, int64_t rows);

// Re-lays w_bits (O, L) row-major into panels [ceil(O/nr)][L][split][nr] (zeros past
// O; split 2 stores each word as its nibble halves w & 0x0F.., (w >> 4) & 0x0F..) and
// fills wrect ((kh+1)*(kw+1), ceil(O/nr)*nr) with the tap popcount prefix sums; only
// panels [p0, p1) and their wrect columns (so that threads can share the work).
void pack_weight_panels(const uint64_t* w, int64_t O, int64_t kh, int64_t kw, int64_t words, int nr, int split,
                        int64_t p0, int64_t p1, uint64_t* panels, int32_t* wrect);

// Levels compiled into this build and runnable on this CPU, best first.
// Returns the count; names[i] point to static strings.
int supported_levels(const char** names, int max_names);
// Every level name this build knows (runnable or not).
bool is_known_level(const char* name);
// Kernels of a level by name; nullptr if unknown or not runnable here.
const LevelKernels* level_kernels(const char* name);

}  // namespace cpu
}  // namespace irnet
