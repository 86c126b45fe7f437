// irnet core: the per-output-channel rule of Libra-PB, written once for the CPU kernel
// (csrc/cpu/libra_pb_cpu.cpp) and the CUDA kernel (csrc/cuda/libra_pb_kernels.cuh), so
// that both give the same bits by construction, for float32, float64, float16, bfloat16.
//
// One channel x[0..n) of a weight of storage type X; T = compute_t<X> is float for
// float32/float16/bfloat16 and double for float64.  Every sum is in double, in the
// canonical order below; every other step is one IEEE operation rounded as written:
//
//   mu_d  = x0 + (sum_i (x_i - x0)) / n     shifted mean (x0 = x[0]; x_i - x0 in double),
//                                           so a constant channel gives mu == x0 exactly
//         [if that is not finite (float64 near the range limit: x_i - x0 overflowed):
//          mu_d = sum_i (x_i / n); if still not finite, a weight is NaN or Inf]
//   mu    = T(mu_d)                         rounded to T before it is subtracted, as the
//                                           reference's (w - w.mean()) is
//   c_i   = x_i - mu                        in T
//   sigma = T(sqrt(sum_i c_i^2 / (n - 1)))  unbiased; c_i^2 in double; n == 1 gives 0
//   v_i   = c_i / sigma                     in T, a true division (sign(v) = sign(c))
//   s     = pow2_round(T(sum_i |v_i| / n))  2^round(log2 mean|v|), exact (core/pow2.h)
//   outputs, rounded once to X:  v_i -> X(v_i),  wb_i = X(v_i) < 0 ? X(-s) : X(s),
//                                inv_sigma = X(1 / sigma),  scale = X(s)
//   (for float16/bfloat16 v, mean|v| and s are float32 values, rounded to X at the end;
//    wb follows the sign of the rounded v, so wb and v always agree).
// Special channels:
//   n == 0 (an (O, 0, ...) weight):  inv_sigma = scale = 0, nothing else to write;
//   sigma == 0 (constant channel) or n == 1:  v = wb = 0, inv_sigma = scale = 0;
//   a NaN or Inf weight:  v = wb = inv_sigma = scale = NaN (status kNonFinite, also given
//   when finite weights near T's largest value overflow x - mu; the CPU
//   kernel raises; the CUDA kernel, which cannot raise, leaves the NaNs and records the
//   channel for the op to report, see csrc/cuda/libra_ede.cu).
//
// The canonical order of a sum (why CPU and GPU sums agree to the bit): element i goes
// to lane i % kLanes; each lane adds its elements in increasing i, starting from +0.0;
// then the kLanes = 256 lane partials p[] are combined in a fixed tree:
//   fold_columns:  p[j] = ((p[j] + p[j+32]) + p[j+64]) + ... + p[j+224]   (j < 32)
//   tree_step:     p[j] = p[j] + p[j+off]   for off = 16, 8, 4, 2, 1      (j < off)
// and the sum is p[0].  The result depends only on n and the values, not on how many
// threads compute it: the CUDA kernel runs one lane per thread (blockDim.x == kLanes,
// BlockLanes in libra_pb_kernels.cuh), the CPU runs all lanes in one loop (SerialLanes
// below), and both call fold_columns / tree_step.  The additions are add_rn & co., which
// the compilers may not contract into FMAs (device: the _rn intrinsics; host: the builds
// pass -ffp-contract=off, and the x86-64 baseline has no FMA anyway).
// What is guaranteed: CPU and CUDA outputs are identical bit for bit, because each output
// is the same sequence of correctly rounded IEEE operations (+, -, *, /, sqrt, the
// conversions, and the exact pow2_round) on the same inputs.  This holds as long as neither
// side flushes subnormals to zero (CUDA is built without --use_fast_math / -ftz=true; on the
// CPU, torch.set_flush_denormal(True) would break it for weights or centred values below
// 2^-126 in float32, 2^-1022 in float64).  It is not a claim about closeness to the exact
// real mean or sigma, which have the usual accuracy of a sum in double.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/common.h"
#include "core/pow2.h"

namespace irnet {
namespace core {
namespace libra_pb {

constexpr int kLanes = 256;     // lanes of the canonical sums (= the CUDA block size)
constexpr int kFoldLanes = 32;  // lanes left after fold_columns (one warp)
static_assert(kLanes % kFoldLanes == 0, "the fold needs whole columns");

template <typename X>
struct compute_type {
  using type = float;  // float32, float16, bfloat16
};
template <>
struct compute_type<double> {
  using type = double;
};
template <typename X>
using compute_t = typename compute_type<X>::type;

// ---- IEEE operations, rounded once each and never contracted -------------------------
#if defined(__CUDA_ARCH__)
IRNET_HD IRNET_INLINE double add_rn(double a, double b) { return __dadd_rn(a, b); }
IRNET_HD IRNET_INLINE double sub_rn(double a, double b) { return __dsub_rn(a, b); }
IRNET_HD IRNET_INLINE double mul_rn(double a, double b) { return __dmul_rn(a, b); }
IRNET_HD IRNET_INLINE double div_rn(double a, double b) { return __ddiv_rn(a, b); }
IRNET_HD IRNET_INLINE double sqrt_rn(double a) { return __dsqrt_rn(a); }
IRNET_HD IRNET_INLINE float sub_rn(float a, float b) { return __fsub_rn(a, b); }
IRNET_HD IRNET_INLINE float div_rn(float a, float b) { return __fdiv_rn(a, b); }
IRNET_HD IRNET_INLINE double abs_(double a) { return ::fabs(a); }
#else
IRNET_HD IRNET_INLINE double add_rn(double a, double b) { return a + b; }
IRNET_HD IRNET_INLINE double sub_rn(double a, double b) { return a - b; }
IRNET_HD IRNET_INLINE double mul_rn(double a, double b) { return a * b; }
IRNET_HD IRNET_INLINE double div_rn(double a, double b) { return a / b; }
IRNET_HD IRNET_INLINE double sqrt_rn(double a) { return std::sqrt(a); }
IRNET_HD IRNET_INLINE float sub_rn(float a, float b) { return a - b; }
IRNET_HD IRNET_INLINE float div_rn(float a, float b) { return a / b; }
IRNET_HD IRNET_INLINE double abs_(double a) { return std::fabs(a); }
#endif

// ---- the canonical combination of the kLanes partial sums (see the top) --------------
IRNET_HD IRNET_INLINE void fold_columns(double* p, int lane) {
  double q = p[lane];
  for (int r = 1; r < kLanes / kFoldLanes; ++r) q = add_rn(q, p[lane + r * kFoldLanes]);
  p[lane] = q;
}
IRNET_HD IRNET_INLINE void tree_step(double* p, int lane, int offset) {
  if (lane < offset) p[lane] = add_rn(p[lane], p[lane + offset]);
}

// Every lane of a sum on one thread: the CPU kernel's executor.  sum(n, term) adds
// term(0..n-1) in the canonical order; for_each(n, f) calls f(0..n-1).
struct SerialLanes {
  template <class Term>
  double sum(int64_t n, Term term) const {
    double p[kLanes];
    for (int j = 0; j < kLanes; ++j) p[j] = 0.0;
    for (int64_t base = 0; base < n; base += kLanes) {
      const int lanes = n - base < kLanes ? static_cast<int>(n - base) : kLanes;
      for (int j = 0; j < lanes; ++j) p[j] = add_rn(p[j], term(base + j));
    }
    for (int lane = 0; lane < kFoldLanes; ++lane) fold_columns(p, lane);
    for (int offset = kFoldLanes / 2; offset > 0; offset >>= 1)
      for (int lane = 0; lane < offset; ++lane) tree_step(p, lane, offset);
    return p[0];
  }
  template <class F>
  void for_each(int64_t n, F f) const {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
};

// ---- the steps of the rule, one function each ------------------------------------------
template <typename T>
IRNET_HD IRNET_INLINE double shifted_term(T x, T x0) {
  return sub_rn(static_cast<double>(x), static_cast<double>(x0));
}
template <typename T>
IRNET_HD IRNET_INLINE double shifted_mean(double shifted_sum, T x0, int64_t n) {
  return add_rn(static_cast<double>(x0), div_rn(shifted_sum, static_cast<double>(n)));
}
template <typename T>
IRNET_HD IRNET_INLINE double mean_term(T x, int64_t n) {  // the fallback mean's terms
  return div_rn(static_cast<double>(x), static_cast<double>(n));
}
template <typename T>
IRNET_HD IRNET_INLINE double square_term(T c) {
  const double d = static_cast<double>(c);
  return mul_rn(d, d);
}
template <typename T>
IRNET_HD IRNET_INLINE T unbiased_sigma(double sum_squares, int64_t n) {
  return n > 1 ? static_cast<T>(sqrt_rn(div_rn(sum_squares, static_cast<double>(n - 1)))) : T(0);
}
template <typename T>
IRNET_HD IRNET_INLINE T standardized(T x, T mu, T sigma) {
  return div_rn(sub_rn(x, mu), sigma);
}
template <typename T>
IRNET_HD IRNET_INLINE T mean_abs(double sum_abs, int64_t n) {
  return static_cast<T>(div_rn(sum_abs, static_cast<double>(n)));
}
// wb of a stored v: the sign of the rounded v (so -0.0 and a v that rounded to 0 give +s).
template <typename X>
IRNET_HD IRNET_INLINE X binarized(X v_stored, X s_pos, X s_neg) {
  return static_cast<compute_t<X>>(v_stored) < compute_t<X>(0) ? s_neg : s_pos;
}

enum class ChannelStatus { kOk, kDegenerate, kNonFinite };

template <typename X>
struct ChannelResult {
  ChannelStatus status;
  X inv_sigma;  // 1 / sigma rounded to X (0 for degenerate, NaN for non-finite channels)
  X scale;      // s rounded to X (same)
};

// Libra-PB forward of one channel: writes v[0..n) and, when wb != nullptr, wb[0..n);
// returns inv_sigma and scale (the caller stores them).  Lanes is SerialLanes or the
// CUDA kernel's BlockLanes; every thread of a block calls this with the same arguments
// (all branches below depend only on block-wide sums, so the barriers inside
// BlockLanes::sum are reached by every thread).
template <typename X, class Lanes>
IRNET_HD ChannelResult<X> standardize_channel(const X* x, X* wb, X* v, int64_t n, const Lanes& lanes) {
  using T = compute_t<X>;
  if (n == 0) return {ChannelStatus::kDegenerate, X(T(0)), X(T(0))};
  const auto at = [x](int64_t i) { return static_cast<T>(x[i]); };

  const T x0 = at(0);
  double mu_d = shifted_mean(lanes.sum(n, [&](int64_t i) { return shifted_term(at(i), x0); }), x0, n);
  if (!isfinite_(mu_d)) mu_d = lanes.sum(n, [&](int64_t i) { return mean_term(at(i), n); });
  if (!isfinite_(mu_d)) {  // a NaN or Inf weight: NaN everywhere, never a valid +-s weight
    const X nan_x = X(quiet_nan<T>());
    lanes.for_each(n, [&](int64_t i) {
      v[i] = nan_x;
      if (wb != nullptr) wb[i] = nan_x;
    });
    return {ChannelStatus::kNonFinite, nan_x, nan_x};
  }
  const T mu = static_cast<T>(mu_d);

  const T sigma = unbiased_sigma<T>(lanes.sum(n, [&](int64_t i) { return square_term(sub_rn(at(i), mu)); }), n);
  if (sigma == T(0)) {  // constant channel, or n == 1
    lanes.for_each(n, [&](int64_t i) {
      v[i] = X(T(0));
      if (wb != nullptr) wb[i] = X(T(0));
    });
    return {ChannelStatus::kDegenerate, X(T(0)), X(T(0))};
  }

  const double sum_abs = lanes.sum(n, [&](int64_t i) {
    const T vi = standardized(at(i), mu, sigma);
    v[i] = X(vi);
    return abs_(static_cast<double>(vi));
  });
  const T s = pow2_round(mean_abs<T>(sum_abs, n));
  const X s_pos = X(s), s_neg = X(-s);
  // Each index is visited by the lane that wrote v[i] above (same i -> same lane in both
  // executors), so reading v back needs no barrier.
  if (wb != nullptr) lanes.for_each(n, [&](int64_t i) { wb[i] = binarized(v[i], s_pos, s_neg); });
  // s is NaN only if a centred weight overflowed T (weights near T's largest value:
  // inf / inf in v): reported like a non-finite weight, never a silent NaN scale.
  const ChannelStatus status = isfinite_(s) ? ChannelStatus::kOk : ChannelStatus::kNonFinite;
  return {status, X(div_rn(T(1), sigma)), s_pos};
}

}  // namespace libra_pb
}  // namespace core
}  // namespace irnet
