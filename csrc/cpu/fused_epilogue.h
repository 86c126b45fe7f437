// irnet CPU: the fused epilogue of irnet::xnor_conv2d_fused on float32 outputs,
//   v = clamp((y * a + b) + res, lo, hi)
// shared by the XNOR-popcount kernels (xnor_level_impl.inc) and the table-lookup kernel
// (xnor_lut.cpp).  Written as plain compares, not std::min/max, so that a NaN stays a
// NaN (as torch.clamp keeps it); the extension is built with -ffp-contract=off, so each
// operation rounds as in PyTorch (no FMA).  Loops without a residual test and
// __restrict pointers let the compiler vectorize them with the caller's SIMD level
// (they are always inlined into the per-level kernels).  Torch-free.
#pragma once

#include <cstdint>

#include "core/common.h"
#include "core/conv_epilogue.h"

namespace irnet {
namespace cpu {

// (the clamp rule shared with the CUDA kernels, csrc/core/conv_epilogue.h)
IRNET_INLINE float fused_value(float v, float lo, float hi) { return core::clamp_keep_nan(v, lo, hi); }

// n outputs of one channel (NCHW: a run of pixels; a, b one value each)
IRNET_INLINE void fused_run(float* __restrict y, const float* __restrict res, int64_t n, float a, float b, float lo,
                            float hi) {
  if (res) {
    for (int64_t i = 0; i < n; ++i) y[i] = fused_value((y[i] * a + b) + res[i], lo, hi);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = fused_value(y[i] * a + b, lo, hi);
  }
}

// n channels of one pixel (channels_last; a, b per channel)
IRNET_INLINE void fused_channels(float* __restrict y, const float* __restrict res, int64_t n,
                                 const float* __restrict a, const float* __restrict b, float lo, float hi) {
  if (res) {
    for (int64_t q = 0; q < n; ++q) y[q] = fused_value((y[q] * a[q] + b[q]) + res[q], lo, hi);
  } else {
    for (int64_t q = 0; q < n; ++q) y[q] = fused_value(y[q] * a[q] + b[q], lo, hi);
  }
}

}  // namespace cpu
}  // namespace irnet
