// irnet CPU: an 8 x 8 float32 transpose-and-store in AVX2, shared by the XNOR-popcount
// kernel's NCHW output (xnor_simd.cpp) and the table-lookup kernel's channels_last
// output (xnor_lut.cpp).  Compiled for AVX2 by its own target attribute, so it inlines
// into either file's AVX2 code; call it only where the CPU has AVX2.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <immintrin.h>

#include "core/common.h"

namespace irnet {
namespace cpu {

// out[q*stride + p] = y[p*ld + q] for p, q < 8: unpack pairs, then 64-bit pairs, then swap
// 128-bit halves: 24 shuffles and 8 contiguous stores instead of 64 scattered ones.
__attribute__((target("avx2"))) IRNET_INLINE void transpose8x8_store(const float* y, int64_t ld, float* out,
                                                                     int64_t stride) {
  __m256 r[8], t[8];
  for (int p = 0; p < 8; ++p) r[p] = _mm256_loadu_ps(y + p * ld);
  for (int p = 0; p < 8; p += 2) {
    t[p] = _mm256_unpacklo_ps(r[p], r[p + 1]);      // p0q0 p1q0 p0q1 p1q1 | q4 q5
    t[p + 1] = _mm256_unpackhi_ps(r[p], r[p + 1]);  // q2 q3 | q6 q7
  }
  for (int p = 0; p < 8; p += 4) {
    for (int h = 0; h < 2; ++h) {
      const __m256d a = _mm256_castps_pd(t[p + h]), b = _mm256_castps_pd(t[p + 2 + h]);
      r[p + 2 * h] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, b));      // p0..3 of q(2h) | q(2h+4)
      r[p + 2 * h + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, b));  // p0..3 of q(2h+1) | q(2h+5)
    }
  }
  for (int q = 0; q < 4; ++q) {
    _mm256_storeu_ps(out + q * stride, _mm256_permute2f128_ps(r[q], r[4 + q], 0x20));
    _mm256_storeu_ps(out + (q + 4) * stride, _mm256_permute2f128_ps(r[q], r[4 + q], 0x31));
  }
}

}  // namespace cpu
}  // namespace irnet
#endif
