// irnet core: the register fragments of the 1-bit tensor-core MMA
//     mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc  d, a, b, c;
// which computes, for the 16x256 bit matrix A, the 256x8 bit matrix B and the 16x8 s32
// matrices C and D,
//     D[i][j] = C[i][j] + sum_{k < 256} (A[i][k] AND B[k][j])        (an integer count).
//
// Transcribed ONCE, from the PTX ISA, section 9.7.14.5.13 "Matrix Fragments for
// mma.m16n8k256" (checked against that text, not against CuTe, whose b1 layouts were
// wrong until CUTLASS PR #1856).  With
//     groupID = laneid >> 2,   threadID_in_group = laneid % 4
// each lane holds
//   A: four .b32 registers, elements a0..a127 "low to high" (a_i = bit i%32 of register i/32)
//        row = groupID        for a_i with 0 <= i < 32 or 64 <= i < 96
//              groupID + 8    otherwise
//        col = threadID_in_group*32 + (i & 0x1F)          for i < 64
//              threadID_in_group*32 + (i & 0x1F) + 128    for i >= 64
//   B: two .b32 registers, elements b0..b63 (b_i = bit i%32 of register i/32)
//        row = threadID_in_group*32 + (i & 0x1F)          for i < 32
//              threadID_in_group*32 + (i & 0x1F) + 128    for i >= 32
//        col = groupID
//   C, D: four .s32 registers c0..c3
//        row = groupID for i < 2, groupID + 8 for i >= 2
//        col = threadID_in_group*2 + (i & 0x1)
//
// One reading of the PTX text: for A's first 64 elements its col formula is printed as
// "(threadID_in_group * 32) + i for ai where i < 64".  Taken literally, a32..a63 (rows 8..15)
// would land on cols 32..159, so cols 0..31 of rows 8..15 would hold no element and cols
// 128..159 two; the mapping would not be a layout at all.  It is read as (i & 0x1F), as the
// same section writes it for i >= 64 and as the m16n8k128 section writes it for the same
// 64 elements (k256 is k128 twice, the second half at col + 128).  csrc/tests/
// test_cuda_emulation.cpp checks that every map below is a bijection onto its matrix and
// spot-checks entries computed by hand from the formulas above.
//
// The bit order inside a register (element i at bit i%32) does not change the result:
// A's k index and B's k index are permuted alike, and the sum over k does not care.
// What matters, and what the emulation tests, is the row / column assignment and that A's
// and B's k positions pair up.
//
// Torch-free, CUDA-free; IRNET_HD so that the kernel's loaders and epilogue and the host
// emulation of a warp call the very same functions.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace irnet {
namespace core {
namespace mma_b1 {

constexpr int kM = 16, kN = 8, kK = 256;        // shape of one mma
constexpr int kARegs = 4, kBRegs = 2, kCRegs = 4;  // 32-bit registers per lane
constexpr int kWarpSize = 32;

IRNET_HD constexpr int group_id(int lane) { return lane >> 2; }
IRNET_HD constexpr int thread_in_group(int lane) { return lane & 3; }

// ---- element level: the PTX formulas, element index i as in the PTX tables ---------
IRNET_HD constexpr int a_row(int lane, int i) {
  return (i < 32 || (i >= 64 && i < 96)) ? group_id(lane) : group_id(lane) + 8;
}
IRNET_HD constexpr int a_col(int lane, int i) {
  return i < 64 ? thread_in_group(lane) * 32 + (i & 0x1F) : thread_in_group(lane) * 32 + (i & 0x1F) + 128;
}
IRNET_HD constexpr int b_row(int lane, int i) {
  return i < 32 ? thread_in_group(lane) * 32 + (i & 0x1F) : thread_in_group(lane) * 32 + (i & 0x1F) + 128;
}
IRNET_HD constexpr int b_col(int lane, int /*i*/) { return group_id(lane); }
IRNET_HD constexpr int c_row(int lane, int i) { return i < 2 ? group_id(lane) : group_id(lane) + 8; }
IRNET_HD constexpr int c_col(int lane, int i) { return thread_in_group(lane) * 2 + (i & 0x1); }

// ---- register level: what the kernel's loaders and epilogue use ----------------------
// Register r of A holds the 32 bits k = 32*a_reg_k32(lane, r) + 0..31 of row a_reg_row:
// one aligned 32-bit word of that row of the k-step (the test checks that the 32
// elements of each register are contiguous in k and share the row).
IRNET_HD constexpr int a_reg_row(int lane, int r) { return a_row(lane, 32 * r); }
IRNET_HD constexpr int a_reg_k32(int lane, int r) { return a_col(lane, 32 * r) / 32; }
// Register r of B holds the bits k = 32*b_reg_k32(lane, r) + 0..31 of column b_reg_col.
IRNET_HD constexpr int b_reg_col(int lane, int r) { return b_col(lane, 32 * r); }
IRNET_HD constexpr int b_reg_k32(int lane, int r) { return b_row(lane, 32 * r) / 32; }
// Register r of C / D is element r of the element level: (c_row(lane, r), c_col(lane, r)).

}  // namespace mma_b1
}  // namespace core
}  // namespace irnet
