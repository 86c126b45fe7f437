// EDE (error decay estimator) arithmetic shared by the CPU training kernels
// (sign_ede_cpu.cpp, libra_pb_cpu.cpp), and their argument checks.
//
//   ede(g, x) = g * k * t * (1 - tanh(t * x)^2)
//
// float:  ((g*k)*t) * sech2(x*t), with the identity
//           1 - tanh(u)^2 = sech(u)^2 = 4e / (1 + e)^2,   e = exp(-2|u|) in (0, 1],
//         which needs one exp (no overflow: the argument is <= 0) and one division
//         instead of a tanh, and has no cancellation where |tanh u| -> 1 (the result is
//         accurate to a few ulp relative, so it agrees with the reference's 1 - th*th
//         within that form's own rounding: a few ulp of |g k t|, absolute).
//         On x86-64 with AVX2+FMA the exp is the vector routine below (Cody-Waite range
//         reduction, degree-6 polynomial, exponent by integer add): ~4x cheaper than
//         SLEEF's tanh, which ATen's torch.tanh uses.
// double: ((g*k)*t) * (1 - th*th), th = tanh(x*t), evaluated as irnet.reference.ede_grad
//         does, with SLEEF's Sleef_tanhd4_u10avx2 (1.0-ulp; ATen's own AVX2 tanh) taken
//         from libtorch_cpu at run time as a weak symbol.
// The portable loops (no AVX2/FMA, or a libtorch without that symbol, or IRNET_SIMD=scalar
// in the environment at the first call, the switch the XNOR kernels read too) use the
// same formulas with std::exp / std::tanh.  Only the functions marked target("avx2,fma")
// use AVX instructions; they are called only after a run-time CPU check.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IRNET_EDE_AVX2 1
#include <immintrin.h>
extern "C" {
__attribute__((weak, target("avx2,fma"))) __m256d Sleef_tanhd4_u10avx2(__m256d);
}
#endif

namespace irnet {
namespace cpu {

inline void check_float_dtype(const char* op, const char* name, const at::Tensor& x) {
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "irnet::", op,
              ": expected ", name, " to be float32, float64, float16 or bfloat16, got ", st);
}

inline double read_scalar(const char* op, const char* name, const at::Tensor& s) {
  TORCH_CHECK(s.numel() == 1, "irnet::", op, ": expected ", name, " to be a one-element (0-dim) tensor, got shape ",
              s.sizes());
  TORCH_CHECK(s.is_floating_point(), "irnet::", op, ": expected ", name, " to be a floating-point tensor, got ",
              s.scalar_type());
  return s.item<double>();
}

// The type the arithmetic runs in: float for float/half/bfloat16, double for double.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

// 1 - tanh(u)^2: see the top of this file for the form per type.
inline float one_minus_tanh2(float u) {
  const float e = std::exp(-2.0f * std::fabs(u));
  const float d = 1.0f + e;
  return (4.0f * e) / (d * d);
}
inline double one_minus_tanh2(double u) {
  const double th = std::tanh(u);
  return 1.0 - th * th;
}

template <typename T>
inline T ede_scalar(T g, T x, T k, T t) {
  const T a = (g * k) * t;
  return a * one_minus_tanh2(x * t);
}

#if IRNET_EDE_AVX2
// Whether the AVX2 loop runs for element type T (double also needs the SLEEF symbol).
template <typename T>
inline bool ede_avx2_available() {
  static const bool cpu_ok = [] {
    const char* env = std::getenv("IRNET_SIMD");
    if (env != nullptr && std::strcmp(env, "scalar") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  if constexpr (std::is_same_v<T, double>) return cpu_ok && Sleef_tanhd4_u10avx2 != nullptr;
  return cpu_ok;
}

#define IRNET_AVX2 __attribute__((target("avx2,fma")))
// The AVX2 vector of each element type: 8 floats or 4 doubles, and 1 - tanh^2 for it.
template <typename T>
struct Avx2Vec;
template <>
struct Avx2Vec<float> {
  using V = __m256;
  static constexpr int64_t kLanes = 8;
  IRNET_AVX2 static V load(const float* p) { return _mm256_loadu_ps(p); }
  IRNET_AVX2 static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  IRNET_AVX2 static V set1(float a) { return _mm256_set1_ps(a); }
  IRNET_AVX2 static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  // exp(r) for r <= 0: r = n*ln2 + f with n = round(r / ln2), |f| <= ln2/2 (ln2 in two
  // parts, so f is exact to ~1 ulp), exp(f) by its degree-6 Taylor polynomial (truncation
  // < 2e-10 relative), times 2^n built in the exponent field.  r is clamped at -87,
  // where exp(r) < 2^-125 stays a normal float; the callers' results there are < 2^-123
  // (instead of smaller still), far below the rounding of their other terms.
  IRNET_AVX2 static V exp_nonpos(V r) {
    r = _mm256_max_ps(r, _mm256_set1_ps(-87.0f));
    const V n = _mm256_round_ps(_mm256_mul_ps(r, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V f = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), r);
    f = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), f);
    V p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n));
  }
  // 4e / (1 + e)^2, e = exp(-2|u|)
  IRNET_AVX2 static V one_minus_tanh2(V u) {
    const V abs_u = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), u);
    const V e = exp_nonpos(_mm256_mul_ps(abs_u, _mm256_set1_ps(-2.0f)));
    const V d = _mm256_add_ps(_mm256_set1_ps(1.0f), e);
    return _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(4.0f), e), _mm256_mul_ps(d, d));
  }
};
template <>
struct Avx2Vec<double> {
  using V = __m256d;
  static constexpr int64_t kLanes = 4;
  IRNET_AVX2 static V load(const double* p) { return _mm256_loadu_pd(p); }
  IRNET_AVX2 static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  IRNET_AVX2 static V set1(double a) { return _mm256_set1_pd(a); }
  IRNET_AVX2 static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  IRNET_AVX2 static V one_minus_tanh2(V u) {
    const V th = Sleef_tanhd4_u10avx2(u);
    return _mm256_sub_pd(_mm256_set1_pd(1.0), _mm256_mul_pd(th, th));
  }
};

// out[i] = ((g[i]*k)*t) * (1 - tanh(x[i]*t)^2) for i < n; the tail (less than one
// vector) goes through the same vector code via a zero-padded copy, so every element
// sees the same arithmetic.
template <typename T>
IRNET_AVX2 inline void ede_avx2(const T* g, const T* x, T* out, int64_t n, T k, T t) {
  using A = Avx2Vec<T>;
  using V = typename A::V;
  const V vk = A::set1(k), vt = A::set1(t);
  const auto ede = [&](V gv, V xv) IRNET_AVX2 {
    const V a = A::mul(A::mul(gv, vk), vt);
    return A::mul(a, A::one_minus_tanh2(A::mul(xv, vt)));
  };
  int64_t i = 0;
  for (; i + A::kLanes <= n; i += A::kLanes) A::store(out + i, ede(A::load(g + i), A::load(x + i)));
  if (i < n) {
    T gb[A::kLanes] = {}, xb[A::kLanes] = {}, ob[A::kLanes];
    std::memcpy(gb, g + i, sizeof(T) * (n - i));
    std::memcpy(xb, x + i, sizeof(T) * (n - i));
    A::store(ob, ede(A::load(gb), A::load(xb)));
    std::memcpy(out + i, ob, sizeof(T) * (n - i));
  }
}
#endif

// out[i] = ede(g[i], x[i]) over n contiguous elements of float or double.
template <typename T>
inline void ede_contiguous(const T* g, const T* x, T* out, int64_t n, T k, T t) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double");
#if IRNET_EDE_AVX2
  if (ede_avx2_available<T>()) {
    ede_avx2(g, x, out, n, k, t);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = ede_scalar(g[i], x[i], k, t);
}

// The same for half / bfloat16 (and strided data): blocks are converted to float,
// run through the float routine, and rounded back once.
template <typename scalar_t>
inline void ede_strided(const char* g, int64_t gs, const char* x, int64_t xs, char* out, int64_t os, int64_t n,
                        opmath_t<scalar_t> k, opmath_t<scalar_t> t) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int64_t kBlock = 256;
  acc_t gb[kBlock], xb[kBlock], ob[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    for (int64_t i = 0; i < m; ++i) {
      gb[i] = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(g + (b + i) * gs));
      xb[i] = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(x + (b + i) * xs));
    }
    ede_contiguous<acc_t>(gb, xb, ob, m, k, t);
    for (int64_t i = 0; i < m; ++i) *reinterpret_cast<scalar_t*>(out + (b + i) * os) = static_cast<scalar_t>(ob[i]);
  }
}

}  // namespace cpu
}  // namespace irnet
