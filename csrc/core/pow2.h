// irnet core: the Libra-PB power-of-two scale s = 2^round(log2 m), shared by the CPU and
// CUDA kernels, bit-exact on both by construction (no transcendental function is called).
//
// The contract (DESIGN.md section 1, irnet.reference.pow2_round) evaluates log2(m) in
// T, the compute type (float for float32/float16/bfloat16 weights, double for float64),
// then rounds half to even: r = nearbyint(RN_T(log2 m)).  A log2 library call would make
// r depend on the library: glibc's log2f and CUDA's log2f (<= 1 ulp) round differently
// near r = k + 1/2, which is exactly where the result can flip (e.g. n = 2 weights give
// m = 1/sqrt(2), log2 m = -1/2).  So r is computed exactly, as a correctly rounded log2
// would give it:
//
//   m = f * 2^e with f in [1, 2) (frexp: exact), so log2 m = e + log2 f, and with
//   h = e + 1/2 (a T value) and gb, ga the gaps from h to its T neighbours below, above:
//     RN_T(log2 m) >= h  <=>  log2 f >= 1/2 - gb/2  <=>  f >= FA(gb) = ceil_T(2^(1/2 - gb/2))
//     RN_T(log2 m) >  h  <=>  log2 f >  1/2 + ga/2  <=>  f >= FB(ga) = ceil_T(2^(1/2 + ga/2))
//   (log2 f is irrational for f in (1, 2), so it never sits on a rounding midpoint), hence
//     r = e + 1                       if f >= FB     (rounds above e + 1/2)
//     r = the even one of e, e + 1    if FA <= f < FB  (rounds to e + 1/2 exactly: a tie)
//     r = e                           otherwise.
//   The gaps are powers of two 2^-j; FA and FB for every j that occurs (float: h up to
//   148.5, j = 16..25; double: h up to 1074.5, j = 42..54) are the tables below,
//   generated with 80-digit decimal arithmetic by tools/gen_pow2_table.py
//   (tests/test_libra_pb_numerics.py regenerates them and compares).
//
// m == 0 gives 0; m NaN, infinite or negative gives NaN (NaN propagates: a NaN mean|v|
// never becomes the valid scale 2^0).
#pragma once

#include <cmath>
#include <limits>

#include "core/common.h"

namespace irnet {
namespace core {

// ---- exact math helpers on both sides (device: the CUDA math API; host: <cmath>) ----
#if defined(__CUDA_ARCH__)
IRNET_HD IRNET_INLINE float frexp_(float x, int* e) { return ::frexpf(x, e); }
IRNET_HD IRNET_INLINE double frexp_(double x, int* e) { return ::frexp(x, e); }
IRNET_HD IRNET_INLINE float ldexp_(float x, int e) { return ::ldexpf(x, e); }
IRNET_HD IRNET_INLINE double ldexp_(double x, int e) { return ::ldexp(x, e); }
IRNET_HD IRNET_INLINE float nextafter_(float x, float y) { return ::nextafterf(x, y); }
IRNET_HD IRNET_INLINE double nextafter_(double x, double y) { return ::nextafter(x, y); }
IRNET_HD IRNET_INLINE int ilogb_(float x) { return ::ilogbf(x); }
IRNET_HD IRNET_INLINE int ilogb_(double x) { return ::ilogb(x); }
IRNET_HD IRNET_INLINE bool isfinite_(float x) { return ::isfinite(x); }
IRNET_HD IRNET_INLINE bool isfinite_(double x) { return ::isfinite(x); }
#else
IRNET_HD IRNET_INLINE float frexp_(float x, int* e) { return std::frexp(x, e); }
IRNET_HD IRNET_INLINE double frexp_(double x, int* e) { return std::frexp(x, e); }
IRNET_HD IRNET_INLINE float ldexp_(float x, int e) { return std::ldexp(x, e); }
IRNET_HD IRNET_INLINE double ldexp_(double x, int e) { return std::ldexp(x, e); }
IRNET_HD IRNET_INLINE float nextafter_(float x, float y) { return std::nextafter(x, y); }
IRNET_HD IRNET_INLINE double nextafter_(double x, double y) { return std::nextafter(x, y); }
IRNET_HD IRNET_INLINE int ilogb_(float x) { return std::ilogb(x); }
IRNET_HD IRNET_INLINE int ilogb_(double x) { return std::ilogb(x); }
IRNET_HD IRNET_INLINE bool isfinite_(float x) { return std::isfinite(x); }
IRNET_HD IRNET_INLINE bool isfinite_(double x) { return std::isfinite(x); }
#endif

template <typename T>
IRNET_HD IRNET_INLINE T quiet_nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

// ---- the threshold tables (generated: tools/gen_pow2_table.py; do not edit by hand) ----
// pow2_tie_start<T>(j) = FA(2^-j), pow2_round_up<T>(j) = FB(2^-j), both in [1, 2).
// BEGIN GENERATED POW2 TABLES
template <typename T>
IRNET_HD T pow2_tie_start(int j);
template <typename T>
IRNET_HD T pow2_round_up(int j);
template <>
IRNET_HD inline float pow2_tie_start<float>(int j) {
  switch (j) {
    case 16: return 0x1.6a096ap+0f;
    case 17: return 0x1.6a09a8p+0f;
    case 18: return 0x1.6a09c8p+0f;
    case 19: return 0x1.6a09d8p+0f;
    case 20: return 0x1.6a09ep+0f;
    case 21: return 0x1.6a09e4p+0f;
    case 22: return 0x1.6a09e6p+0f;
    case 23: return 0x1.6a09e6p+0f;
    case 24: return 0x1.6a09e6p+0f;
    case 25: return 0x1.6a09e8p+0f;
    default: return quiet_nan<float>();
  }
}
template <>
IRNET_HD inline float pow2_round_up<float>(int j) {
  switch (j) {
    case 16: return 0x1.6a0a64p+0f;
    case 17: return 0x1.6a0a26p+0f;
    case 18: return 0x1.6a0a06p+0f;
    case 19: return 0x1.6a09f8p+0f;
    case 20: return 0x1.6a09fp+0f;
    case 21: return 0x1.6a09ecp+0f;
    case 22: return 0x1.6a09eap+0f;
    case 23: return 0x1.6a09e8p+0f;
    case 24: return 0x1.6a09e8p+0f;
    case 25: return 0x1.6a09e8p+0f;
    default: return quiet_nan<float>();
  }
}
template <>
IRNET_HD inline double pow2_tie_start<double>(int j) {
  switch (j) {
    case 42: return 0x1.6a09e667f39d7p+0;
    case 43: return 0x1.6a09e667f3ad2p+0;
    case 44: return 0x1.6a09e667f3b5p+0;
    case 45: return 0x1.6a09e667f3b8ep+0;
    case 46: return 0x1.6a09e667f3baep+0;
    case 47: return 0x1.6a09e667f3bbdp+0;
    case 48: return 0x1.6a09e667f3bc5p+0;
    case 49: return 0x1.6a09e667f3bc9p+0;
    case 50: return 0x1.6a09e667f3bcbp+0;
    case 51: return 0x1.6a09e667f3bccp+0;
    case 52: return 0x1.6a09e667f3bcdp+0;
    case 53: return 0x1.6a09e667f3bcdp+0;
    case 54: return 0x1.6a09e667f3bcdp+0;
    default: return quiet_nan<double>();
  }
}
template <>
IRNET_HD inline double pow2_round_up<double>(int j) {
  switch (j) {
    case 42: return 0x1.6a09e667f3dc3p+0;
    case 43: return 0x1.6a09e667f3cc8p+0;
    case 44: return 0x1.6a09e667f3c4bp+0;
    case 45: return 0x1.6a09e667f3c0cp+0;
    case 46: return 0x1.6a09e667f3becp+0;
    case 47: return 0x1.6a09e667f3bddp+0;
    case 48: return 0x1.6a09e667f3bd5p+0;
    case 49: return 0x1.6a09e667f3bd1p+0;
    case 50: return 0x1.6a09e667f3bcfp+0;
    case 51: return 0x1.6a09e667f3bcep+0;
    case 52: return 0x1.6a09e667f3bcep+0;
    case 53: return 0x1.6a09e667f3bcdp+0;
    case 54: return 0x1.6a09e667f3bcdp+0;
    default: return quiet_nan<double>();
  }
}
// END GENERATED POW2 TABLES

// r = nearbyint(RN_T(log2 m)) for a finite m > 0, computed exactly (see the top).
template <typename T>
IRNET_HD inline int pow2_round_exponent(T m) {
  int k = 0;
  const T f = frexp_(m, &k) * T(2);  // m = f * 2^(k-1), f in [1, 2); exact, subnormals too
  const int e = k - 1;
  const T h = T(e) + T(0.5);        // exact: |e| < 2^11
  const T gap_below = h - nextafter_(h, -std::numeric_limits<T>::infinity());
  const T gap_above = nextafter_(h, std::numeric_limits<T>::infinity()) - h;
  if (f >= pow2_round_up<T>(-ilogb_(gap_above))) return e + 1;
  if (f >= pow2_tie_start<T>(-ilogb_(gap_below))) return (e & 1) ? e + 1 : e;  // tie: to even
  return e;
}

// s = 2^round(log2 m), round half to even; 0 when m == 0; NaN when m is NaN, infinite or
// negative.  T is float or double (reduced types compute in float and round s after).
template <typename T>
IRNET_HD inline T pow2_round(T m) {
  if (m == T(0)) return T(0);
  if (!(m > T(0)) || !isfinite_(m)) return quiet_nan<T>();
  return ldexp_(T(1), pow2_round_exponent(m));
}

}  // namespace core
}  // namespace irnet
