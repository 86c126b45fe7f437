// irnet core: the output step of every binary convolution, one rounding per operation.
//
//   y = float(dot) * scale[o]                                   (xnor_conv2d)
//   y = clamp((float(dot) * scale[o] * alpha[o] + beta[o]) + residual, lo, hi)
//                                                               (xnor_conv2d_fused)
// float(dot) rounds to nearest even (exact below 2^24), as the reference's float64 ->
// float32 cast; a missing scale is a multiply by 1.0f (exact), as the CPU kernel does.
// Each multiply and add rounds once: on the device through __fmul_rn / __fadd_rn, which
// nvcc never contracts into an FMA; on the host the extension is built with
// -ffp-contract=off.  The clamp is written as two compares so that a NaN stays a NaN (as
// torch.clamp keeps it); the order (BatchNorm, then residual, then clamp) is that of
// irnet.reference.fused_epilogue and of csrc/cpu/fused_epilogue.h.  Torch-free.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace irnet {
namespace core {

IRNET_HD IRNET_INLINE float to_float_rn(int64_t v) {
#if defined(__CUDA_ARCH__)
  return __ll2float_rn(static_cast<long long>(v));
#else
  return static_cast<float>(v);
#endif
}

IRNET_HD IRNET_INLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

IRNET_HD IRNET_INLINE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// clamp(v, lo, hi) that keeps a NaN v (both compares are false for NaN)
IRNET_HD IRNET_INLINE float clamp_keep_nan(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// What the epilogue of a conv kernel needs besides the dot products.  scale may be null
// (no scale); alpha, beta (and residual, which may be null) are read only when fused.
// residual has the output's shape and memory layout (element `off` belongs to output `off`).
struct ConvEpilogue {
  float* y;
  const float* scale;
  const float* alpha;
  const float* beta;
  const float* residual;
  float lo, hi;
};

// The value of output element `off` (output channel o) from its integer dot product.
template <bool kFused>
IRNET_HD IRNET_INLINE float conv_output_value(const ConvEpilogue& e, int64_t dot, int64_t o, int64_t off) {
  float v = mul_rn(to_float_rn(dot), e.scale != nullptr ? e.scale[o] : 1.0f);
  if (kFused) {
    v = add_rn(mul_rn(v, e.alpha[o]), e.beta[o]);
    if (e.residual != nullptr) v = add_rn(v, e.residual[off]);
    v = clamp_keep_nan(v, e.lo, e.hi);
  }
  return v;
}

}  // namespace core
}  // namespace irnet
