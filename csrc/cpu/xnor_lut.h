// irnet CPU: the table-lookup ("LUT") binary convolution, an AVX2 alternative to the
// XNOR-popcount tile of xnor_level_impl.inc for layers with few input channels.
// Torch-free; threading and the choice between the two live in xnor_cpu.cpp.
//
// The idea.  Split every pixel's packed input bits into nibbles (4 channels each).  For
// a weight nibble w (of one output channel, one tap, one group of 4 input channels)
// the number of matching signs with an activation nibble v is a 16-entry table
//   T_w[v] = popcount(~(v ^ w) & valid)      (valid: the nibble's real channels)
// and VPSHUFB looks up 32 such entries at once, one per byte of an index vector.  So
// the index vector holds one nibble of 32 *output positions* (a row of the input,
// read at a tap's offset) and the table is T_w in both 128-bit halves: one VPSHUFB and
// one VPADDB give 32 positions x 4 channels = 128 binary MACs, against XOR + VPSHUFB +
// VPADDB per 128 MACs in the popcount tile (nibble-split operands, xnor_simd.cpp).
// There are only 16 tables per valid-channel count, so the weights are stored as one
// table offset per (output channel, step) and the tables stay in L1.  Counts grow by
// at most 4 per step in bytes (63 steps, then added into 16-bit counts), and
//   dot = matches - mismatches = 2 * matches - K_in,   y = scale[o] * float(dot),
// exactly what the popcount kernel computes.  A padded tap reads an index byte 0x80,
// which VPSHUFB turns into 0 matches, and K_in = C * (in-frame taps) of the output
// position: the zero padding needs no other correction.
//
// Layout.  The activations of one call become zero-padded "nibble planes", one byte
// per padded position: image n, nibble c4, polyphase sub-plane s = (y % sh)*sw + x % sw
// holding padded rows y = r*sh + (y % sh), columns x = c*sw + (x % sw) at r*Wq + c.
// With strides split into sub-planes, output position (ho, wo) reads tap (i, j) at
//   sub-plane ((i*dh) % sh, (j*dw) % sw), position (ho + i*dh/sh)*Wq + wo + j*dw/sw,
// i.e. at q + (a constant of the step) with q = ho*Wq + wo: consecutive q are
// consecutive bytes, for any stride and dilation.  Output positions are therefore
// computed on the Wq-pitched grid q in [0, Qn), Qn = (Ho-1)*Wq + Wo; the Wq - Wo
// columns past each row's end are computed and dropped.
#pragma once

#include <cstdint>

#include "cpu/xnor_simd.h"

namespace irnet {
namespace cpu {

// The plane layout above, shared with the position-vectorized popcount kernel
// (xnor_planes.h), whose elements are L-channel lanes (L/8 bytes) instead of nibbles.
// Sizes and offsets count elements (the LUT kernel's are bytes).
struct PlaneGeometry {
  int64_t groups = 0;  // elements per pixel: ceil(C / group_channels) (LUT: nibbles)
  int64_t T = 0;       // taps: kh * kw
  int64_t K = 0;       // steps per dot: groups * T (LUT: step k = group * T + tap)
  int64_t Hq = 0;      // sub-plane rows: ceil(Hp / sh)
  int64_t Wq = 0;      // sub-plane columns (and output grid pitch): ceil(Wp / sw)
  int64_t S = 0;       // sub-planes per group: sh * sw
  int64_t plane = 0;   // elements of a sub-plane: Hq * Wq
  int64_t image = 0;   // elements of one image's planes: groups * S * plane
  int64_t Qn = 0;      // output grid positions per image: (Ho - 1) * Wq + Wo
  int64_t Qk = 0;      // entries of kin: Qn + one vector (a vector starting before Qn reads kin past it)
  int64_t total = 0;   // elements of the planes buffer, with slack for the last tile's reads
};
using LutGeometry = PlaneGeometry;

// group_channels: channels per element; vec: grid positions per vector; tile: positions
// a register tile spans (its reads past a step's offset).
PlaneGeometry plane_geometry(const ConvProblem& P, int64_t group_channels, int64_t vec, int64_t tile);
// The LUT kernel's: nibbles, 32-byte vectors, qv positions per tile.
inline LutGeometry lut_geometry(const ConvProblem& P, int64_t qv) { return plane_geometry(P, 4, 32, qv); }

// The kernel counts matches in 16-bit lanes, at most 4 per step: it takes dots of up to
// this many steps (K = ceil(C/4) * kh * kw; a 3x3 layer with up to 7280 input channels).
constexpr int64_t kMaxLutSteps = 65535 / 4;

// The per-call data of a LUT convolution (pointers owned by the driver).
struct LutProblem {
  const ConvProblem* P = nullptr;  // shapes, out, the fused epilogue (x: the packed input)
  LutGeometry G;
  const uint8_t* planes = nullptr;  // G.total bytes, filled by prep_planes
  const int64_t* xoff = nullptr;    // [K]: byte offset of step k from an image's planes
  const uint16_t* wofs = nullptr;   // [opad][K]: byte offset of (o, k)'s table in the table set
  const int32_t* kin = nullptr;     // [Qk]: K_in of grid position q (0 past a row's end)
  const float* scale = nullptr;     // [O]: the scale, or ones
};

struct LutKernels {
  int ot;  // output channels per register tile (wofs rows are padded to a multiple)
  int qv;  // output grid positions per register tile
  // Fills the plane rows of units [u0, u1), u = (n*sh + y % sh)*Hq + r (every byte of
  // planes[0, N*image) belongs to exactly one unit); the slack is the caller's.
  void (*prep_planes)(const ConvProblem& P, const LutGeometry& G, int64_t u0, int64_t u1, uint8_t* planes);
  // Output grid positions [q0, q1) of image n, output channels [o0, o1) (o0 a multiple
  // of ot), written to P.out (NCHW or channels_last) with the fused epilogue if set.
  void (*conv_block)(const LutProblem& L, int64_t n, int64_t q0, int64_t q1, int64_t o0, int64_t o1, void* scratch);
  // scratch bytes conv_block needs for a range of `channels` output channels
  int64_t (*scratch_bytes)(int64_t channels);
  // Throughput probe: runs the register tile `iters` times over L1-resident planes and
  // tables with `steps` lookup steps per dot; returns the binary MACs done (each lookup:
  // 32 positions x 4 channels).
  int64_t (*peak_probe)(int64_t steps, int64_t iters, uint64_t* sink);
};

// The AVX2 kernels, or nullptr where the CPU (or the build) has no AVX2.
const LutKernels* lut_kernels();

// xoff[k] for the K steps, k = group * T + tap (see the layout above), in elements.
void plane_offsets(const ConvProblem& P, const PlaneGeometry& G, int64_t* xoff);
// kin[q] (q < G.Qk): K_in = C * (in-frame kernel rows) * (in-frame kernel columns) of
// grid position q = ho * Wq + wo, 0 where wo >= Wo or q >= Qn (positions computed and dropped).
void plane_kin(const ConvProblem& P, const PlaneGeometry& G, int32_t* kin);
// wofs rows [o0, o1) of opad: the table of each (o, k) from w_bits (O, kh, kw, words)
// (tail bits past C zero); rows past O point at the all-zero table.
void lut_weight_offsets(const uint64_t* w, const ConvProblem& P, const LutGeometry& G, int64_t o0, int64_t o1,
                        uint16_t* wofs);

}  // namespace cpu
}  // namespace irnet
