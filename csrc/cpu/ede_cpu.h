// EDE (error decay estimator) arithmetic shared by the CPU training kernels
// (sign_ede_cpu.cpp, libra_pb_cpu.cpp), and their argument checks.
//
//   ede(g, x) = g * k * t * (1 - tanh(t * x)^2)
//
// evaluated in the same order as irnet.reference.ede_grad, ((g*k)*t) * (1 - th*th)
// with th = tanh(x*t), so results agree with it to the ulp or two in which two tanh
// implementations differ.  (1 - th^2 is computed as the reference does, not as the
// more accurate sech^2: where tanh rounds to 1 both give 0.)
//
// On x86-64 with AVX2+FMA, tanh is SLEEF's Sleef_tanh{f8,d4}_u10avx2 (1.0-ulp), the very
// routine ATen's own AVX2 torch.tanh calls, taken from libtorch_cpu at run time
// (weak symbols: if a libtorch lacks them, or the CPU lacks AVX2/FMA, the portable
// std::tanh loop runs instead; so it does when the environment has IRNET_SIMD=scalar at
// the first call, the switch the XNOR kernels read too).  Only the functions marked
// target("avx2,fma") use AVX instructions; they are called only after a run-time CPU check.
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
__attribute__((weak, target("avx2,fma"))) __m256 Sleef_tanhf8_u10avx2(__m256);
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

template <typename T>
inline T ede_scalar(T g, T x, T k, T t) {
  const T a = (g * k) * t;
  const T th = std::tanh(x * t);
  return a * (T(1) - th * th);
}

#if IRNET_EDE_AVX2
inline bool ede_avx2_available() {
  static const bool ok = [] {
    const char* env = std::getenv("IRNET_SIMD");
    if (env != nullptr && std::strcmp(env, "scalar") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && Sleef_tanhf8_u10avx2 != nullptr &&
           Sleef_tanhd4_u10avx2 != nullptr;
  }();
  return ok;
}

#define IRNET_AVX2 __attribute__((target("avx2,fma")))
// The AVX2 vector of each element type: 8 floats or 4 doubles, and SLEEF's tanh for it.
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
  IRNET_AVX2 static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  IRNET_AVX2 static V tanh(V a) { return Sleef_tanhf8_u10avx2(a); }
};
template <>
struct Avx2Vec<double> {
  using V = __m256d;
  static constexpr int64_t kLanes = 4;
  IRNET_AVX2 static V load(const double* p) { return _mm256_loadu_pd(p); }
  IRNET_AVX2 static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  IRNET_AVX2 static V set1(double a) { return _mm256_set1_pd(a); }
  IRNET_AVX2 static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  IRNET_AVX2 static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  IRNET_AVX2 static V tanh(V a) { return Sleef_tanhd4_u10avx2(a); }
};

// out[i] = ((g[i]*k)*t) * (1 - th*th), th = tanh(x[i]*t), for i < n; the tail (less
// than one vector) goes through the same vector code via a zero-padded copy, so every
// element sees the same tanh.
template <typename T>
IRNET_AVX2 inline void ede_avx2(const T* g, const T* x, T* out, int64_t n, T k, T t) {
  using A = Avx2Vec<T>;
  using V = typename A::V;
  const V vk = A::set1(k), vt = A::set1(t), one = A::set1(T(1));
  const auto ede = [&](V gv, V xv) IRNET_AVX2 {
    const V a = A::mul(A::mul(gv, vk), vt);
    const V th = A::tanh(A::mul(xv, vt));
    return A::mul(a, A::sub(one, A::mul(th, th)));
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
  if (ede_avx2_available()) {
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
