// irnet core: the Libra-PB power-of-two scale, shared by the CPU and CUDA kernels.
#pragma once

#include <math.h>

#include "core/common.h"

namespace irnet {
namespace core {

IRNET_HD IRNET_INLINE float log2_(float x) { return ::log2f(x); }
IRNET_HD IRNET_INLINE double log2_(double x) { return ::log2(x); }
IRNET_HD IRNET_INLINE float nearbyint_(float x) { return ::nearbyintf(x); }
IRNET_HD IRNET_INLINE double nearbyint_(double x) { return ::nearbyint(x); }
IRNET_HD IRNET_INLINE float ldexp_(float x, int e) { return ::ldexpf(x, e); }
IRNET_HD IRNET_INLINE double ldexp_(double x, int e) { return ::ldexp(x, e); }

// s = 2^round(log2(m)), round half to even (nearbyint under the default rounding mode,
// like torch.round), s = 0 when m == 0.  log2 is evaluated in T, the weight's precision,
// as the reference does: for float32 weights log2f(2^1.5 rounded to float) is exactly
// 1.5, which rounds to 2, while a double log2 of the same float gives 1.4999999... -> 1.
template <typename T>
IRNET_HD IRNET_INLINE T pow2_round(T m) {
  return m == T(0) ? T(0) : ldexp_(T(1), static_cast<int>(nearbyint_(log2_(m))));
}

}  // namespace core
}  // namespace irnet
