// irnet CPU: the position-vectorized popcount ("planes") binary convolution, an AVX-512
// alternative to the XNOR-popcount tile of xnor_level_impl.inc for layers with few input
// channels, where that tile's one 64-bit word per tap is mostly empty (16 channels: 3/4 of
// it).  Torch-free; threading and the choice of kernel live in xnor_cpu.cpp.
//
// The idea.  Split every pixel's C channel bits into G = ceil(C / L) lanes of L bits, L in
// {8, 16, 32, 64} chosen per layer (planes_lane_bits), and lay the input out as one plane
// of L-bit elements per lane group, one element per padded position: the plane layout of
// the table-lookup kernel (xnor_lut.h: zero-padded polyphase sub-planes, so that output
// grid position q = ho * Wq + wo reads tap t of group g at q + xoff[g, t] for any stride
// and dilation).  A zmm register then holds V = 512 / L consecutive grid positions of one
// group, and for output channel o with weight lane w = w[o, t, g] (broadcast to every lane)
//   matches(q) += popcount(~(x ^ w) & m)          (lane-wise, L-bit lanes)
// is one VPTERNLOG (imm 0x82: (a == b) & c), one VPOPCNTB/W/D/Q and one VPADDB/W/D/Q for
// V positions x L channels = 512 binary MACs, all bits used when L divides C.  Then
//   dot = matches - mismatches = 2 * matches - K_in(q),   y = float(dot) * scale[o],
// exactly what the popcount kernel computes (K_in: C x the taps of q in frame; plane_kin).
//
// Padding without a correction term: m is read from a "mask plane" (one per sub-plane,
// shared by all images and groups, built once per call) whose element is all ones at
// in-frame positions and 0 in the zero padding, so a padded tap counts no match whatever
// the weight.  The channels past C of the last group are excluded by the weights: their
// bits are stored as 1 and the input's as 0, so ~(x ^ w) is 0 there.  (The alternative
// without a mask plane, x = 0 in the padding and the popcount tile's per-border correction
// of the counts, saves one L1 load per position vector and step; the loads are not the
// bound here (the three vector ALU ops per (channel, vector) on ports 0 and 5 are) while
// the correction would cost a per-position gather in the epilogue.)
//
// Register tile: OB = 8 output channels x NV position vectors (NV = 2 for 16-bit lanes, 3
// otherwise), OB * NV accumulators; per step NV loads of x and m (shared by the OB channels)
// and OB broadcasts (shared by the NV vectors), 3 * OB * NV vector ALU ops.  (Tried on the
// ResNet-20 / VGG layers: 4x4, 4x6, 6x4, 8x3, 12x2, 16x1, 16x2; 8x2 was best for 16-bit
// lanes, 8x3 for 32 and 64 bits, by 5-15%.)  Lanes of L = 8 and 16 bits overflow (at most L
// matches per step): their counts are widened into int32 every floor((2^L - 1) / L) steps
// (31 and 4095 taps at one group).
// The epilogue works on the counts in registers: y = (2 * float(count) - K_in) * scale, the
// first two terms as one FMA (exact: an integer below 2^24), the product rounded once as
// in the other kernels.  Every vector's positions are runs of output columns of one or
// more output rows (the grid's Wq - Wo columns past a row's end are computed and dropped);
// NCHW output gets each run as a masked store per 16 positions straight from the
// registers (with the fused epilogue), channels_last output staged and transposed 8
// channels x 16 pixels at a time.  Vectors start either every V grid positions (the grid)
// or at every output row's start (ho * Wq + j * V): the second computes
// Ho * ceil(Wo / V) * V positions instead of ceil(Qn / V) * V, all useful when V divides
// Wo (ResNet-20's 32x32 rows with 16 channels, 16x16 with 32, 8x8 with 64); planes_layout
// takes the one with fewer vectors.
//
// Measured on a 2-core Intel Xeon (Sapphire Rapids, AVX-512 VPOPCNTDQ/BITALG, KVM), one
// thread: the peak probes (max of 80 short runs) reach 1.10 / 1.29 / 1.31 / 1.26 T binary
// MAC/s with 8 / 16 / 32 / 64-bit lanes at 144 steps a dot (0.76 / 0.98 / 1.18 / 1.14 at
// 9 steps, the 3x3 taps of one group: the epilogue's share), the popcount tile 1.31 at 64
// words a dot (1.06 at 9).  As whole ops (packed input, NCHW, interleaved A/B, thread CPU
// time, medians), against the popcount tile: ResNet-20 16@32 8.5 vs 25.2 us at batch 1
// (2.98x; ~4.5 us of either is the op's call overhead) and 59 vs 341 us at batch 16
// (5.8x); 32@16 7.7 vs 13.8 (1.8x) and 45 vs 118 (2.6x); 64@8 1.28x / 1.23x; see
// prefers_planes in xnor_cpu.cpp for every layer measured and the rule "auto" follows.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/xnor_lut.h"
#include "cpu/xnor_simd.h"

namespace irnet {
namespace cpu {

// The layout of one problem (portable).
struct PlanesLayout {
  PlaneGeometry G;        // groups of L channels; sizes in elements of L bits
  int lane_bits = 0;      // L
  int vec = 0;            // grid positions per vector: 512 / L
  int ob = 0;             // output channels per register tile (weight rows padded to a multiple)
  int nv = 0;             // position vectors per register tile
  bool rows = false;      // vectors at output row starts (else every `vec` grid positions)
  int64_t vectors = 0;    // vectors per image
  int64_t per_row = 0;    // (rows) vectors per output row: ceil(Wo / vec)
  int64_t chunk_taps = 0; // taps whose counts fit the L-bit lanes (per chunk of the dot)
  int64_t mask_total = 0; // elements of the mask planes buffer (S sub-planes and slack)
};

// L for C input channels: 8 up to 8 channels, else the smallest G * L (the bits a
// position's dot reads per tap: the work) over L in {64, 32, 16}, the larger L on a tie
// (fewer positions per vector: less of the grid computed and dropped, fewer count
// widenings).  (8-bit lanes for more channels would save a few bits at the price of a
// widening every 31 steps and twice the grid positions per vector.)
int planes_lane_bits(int64_t C);
PlanesLayout planes_layout(const ConvProblem& P);

// Weights, re-laid for the tile: [opad / ob][K][ob] words, k = tap * groups + g (taps
// outer: a tap's mask vector serves all its groups), each the L bits of channels
// [g*L, g*L + L) of w_bits (O, kh, kw, words) at tap t, bits past C set, repeated to fill
// the 64-bit word (a 64-bit broadcast is then an L-bit one); channels past O all zero.
// Tiles [t0, t1) of opad / ob.
void planes_weights(const uint64_t* w, const ConvProblem& P, const PlanesLayout& Y, int64_t t0, int64_t t1,
                    uint64_t* dst);
// A run of output columns of one output row inside a vector: the vector's positions
// [i0, i0 + len) are output pixels [m, m + len) (m = ho * Wo + wo) of an image.
struct PlanesRun {
  int64_t i0, len, m;
};

// The image-independent data of a call (portable; a driver may keep it for equal shapes).
struct PlanesTables {
  std::vector<int64_t> xoff;           // [T]: element offset of tap t in group 0 (plane_offsets)
  std::vector<float> kin;              // [G.Qk]: K_in of each grid position (plane_kin), as float
  std::vector<unsigned char> mask;     // the mask planes: Y.mask_total elements of L/8 bytes, all
                                       // ones at the in-frame positions of the S sub-planes, zero
                                       // in the padding and the slack
  std::vector<int64_t> vq;             // [vectors]: the grid position where each vector starts
  std::vector<int64_t> run_begin;      // [vectors + 1]: vector v's runs are runs[run_begin[v] ..)
  std::vector<PlanesRun> runs;         // in order (rows: one per vector)
  int64_t max_runs = 0;                // the most runs of one vector
};
void planes_tables(const ConvProblem& P, const PlanesLayout& Y, PlanesTables& out);

// The same as plain pointers, for the kernels (which instantiate no std:: template under
// their target pragma: see xnor_level_impl.inc).
struct PlanesTableView {
  const int64_t* xoff = nullptr;
  const float* kin = nullptr;
  const void* mask = nullptr;
  const int64_t* vq = nullptr;
  const int64_t* run_begin = nullptr;
  const PlanesRun* runs = nullptr;
  int64_t max_runs = 0;
};
PlanesTableView planes_table_view(const PlanesTables& t);

// The per-call data of a planes convolution (pointers owned by the driver).
struct PlanesProblem {
  const ConvProblem* P = nullptr;  // shapes, out, the fused epilogue
  PlanesLayout Y;
  const void* planes = nullptr;    // Y.G.total elements, filled by prep_planes
  PlanesTableView tables;
  const uint64_t* w = nullptr;     // planes_weights
  const float* scale = nullptr;    // [O]: the scale, or ones
};

struct PlanesKernels {
  // Fills the plane rows of units [u0, u1), u = (n*sh + y % sh)*Hq + r, from P.x (packed;
  // bits past C ignored) or, where set, P.xf (float32, contiguous NCHW or with P.xf_cl
  // channels_last: packed here, x < 0 -> 1);
  // every element of planes[0, N*image) belongs to exactly one unit; the slack is the caller's.
  void (*prep_planes)(const ConvProblem& P, const PlanesLayout& Y, int64_t u0, int64_t u1, void* planes);
  // Vectors [v0, v1) of image n, output channels [o0, o1) (o0 a multiple of ob), written to
  // P.out (NCHW or channels_last) with the fused epilogue if set.
  void (*conv_block)(const PlanesProblem& Q, int64_t n, int64_t v0, int64_t v1, int64_t o0, int64_t o1,
                     void* scratch);
  // scratch bytes conv_block needs for a range of `channels` output channels
  int64_t (*scratch_bytes)(const PlanesLayout& Y, int64_t channels);
  // Throughput probe: the register tile of lanes of `lane_bits` run `iters` times over
  // L1-resident planes, `steps` steps per dot; returns the binary MACs done (512 a vector
  // step: V positions x L channels).
  int64_t (*peak_probe)(int lane_bits, int64_t steps, int64_t iters, uint64_t* sink);
};

// The AVX-512 kernels (avx512f/bw + VPOPCNTDQ + BITALG), or nullptr where the CPU (or the
// build) lacks them.
const PlanesKernels* planes_kernels();

}  // namespace cpu
}  // namespace irnet
