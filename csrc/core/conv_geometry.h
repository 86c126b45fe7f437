// irnet core: convolution geometry with zero padding, per axis.
//
// Output size: out = floor((in + 2*pad - dil*(k-1) - 1) / stride) + 1.
// For output position p the kernel tap t (0 <= t < k) reads input position
//   i(t) = p*stride - pad + t*dil,
// which is "in frame" iff 0 <= i(t) < in.  i(t) is increasing in t, so the in-frame
// taps form one contiguous range [t0, t1) (empty: t0 == t1).  A padded tap holds 0,
// so it contributes nothing to the dot; the in-frame taps contribute C each to K:
//   K(p, q) = C * (t1_h - t0_h) * (t1_w - t0_w).
// Torch-free; IRNET_HD so that CUDA kernels share the same arithmetic.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace irnet {
namespace core {

// Floor division for a possibly negative numerator and positive denominator.
IRNET_HD constexpr int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Ceiling division for a non-negative numerator and positive denominator.
IRNET_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// (floor, not truncation: a kernel larger than the padded input gives <= 0)
IRNET_HD constexpr int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return floor_div(in + 2 * pad - dil * (k - 1) - 1, stride) + 1;
}

struct TapRange {
  int64_t t0, t1;  // in-frame taps [t0, t1)
};

// In-frame taps of output position p along one axis.
IRNET_HD inline TapRange tap_range(int64_t p, int64_t k, int64_t stride, int64_t pad, int64_t dil, int64_t in) {
  const int64_t base = p * stride - pad;
  // smallest t with base + t*dil >= 0
  int64_t t0 = base >= 0 ? 0 : (-base + dil - 1) / dil;
  // largest t with base + t*dil <= in - 1, plus one
  int64_t t1 = floor_div(in - 1 - base, dil) + 1;
  if (t0 > k) t0 = k;
  if (t1 > k) t1 = k;
  if (t1 < t0) t1 = t0;
  return {t0, t1};
}

// Output positions [lo, hi) whose taps are all in frame (the interior along one axis).
IRNET_HD inline TapRange interior_range(int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t dil, int64_t in) {
  // need p*stride - pad >= 0 and p*stride - pad + (k-1)*dil <= in - 1
  int64_t lo = (pad + stride - 1) / stride;
  int64_t hi = floor_div(in - 1 - (k - 1) * dil + pad, stride) + 1;
  if (hi > out) hi = out;
  if (lo > out) lo = out;
  if (hi < lo) hi = lo;
  return {lo, hi};
}

}  // namespace core
}  // namespace irnet
