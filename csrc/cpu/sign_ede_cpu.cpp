// CPU kernels of irnet::sign_ede and irnet::sign_ede_backward.
//
// Both are elementwise and run through ATen's TensorIterator: for_each splits the
// range over the intra-op thread pool inside libtorch (whatever flags this file was
// built with) and hands each chunk to the loops below, which take a contiguous fast
// path and a strided fallback (so a non-contiguous x needs no copy).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/TensorIterator.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#include "ede_cpu.h"

namespace irnet {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------------
// sign(x) = -1 if x < 0 else +1, computed on the IEEE-754 bit pattern b (unsigned):
// x < 0  <=>  the sign bit is set, x is not -0.0 and not a NaN
//        <=>  kSign < b <= (bits of -inf)
// (-0.0 is exactly kSign; every negative NaN is above -inf).  The result's bits are
// those of +1 with the sign bit or-ed in.  One integer compare-and-select per element:
// the compiler vectorizes it for all four float types alike.
template <typename T>
struct SignBits;
template <>
struct SignBits<float> {
  using U = uint32_t;
  static constexpr U kSign = 0x80000000u, kNegInf = 0xFF800000u, kOne = 0x3F800000u;
};
template <>
struct SignBits<double> {
  using U = uint64_t;
  static constexpr U kSign = 0x8000000000000000ull, kNegInf = 0xFFF0000000000000ull, kOne = 0x3FF0000000000000ull;
};
template <>
struct SignBits<c10::Half> {
  using U = uint16_t;
  static constexpr U kSign = 0x8000u, kNegInf = 0xFC00u, kOne = 0x3C00u;
};
template <>
struct SignBits<c10::BFloat16> {
  using U = uint16_t;
  static constexpr U kSign = 0x8000u, kNegInf = 0xFF80u, kOne = 0x3F80u;
};

template <typename scalar_t>
inline typename SignBits<scalar_t>::U sign_bits(typename SignBits<scalar_t>::U b) {
  using S = SignBits<scalar_t>;
  using U = typename S::U;
  return static_cast<U>(S::kOne | ((b > S::kSign && b <= S::kNegInf) ? S::kSign : U(0)));
}

template <typename scalar_t>
void sign_loop(char** data, const int64_t* strides, int64_t n) {
  using U = typename SignBits<scalar_t>::U;
  constexpr int64_t sz = sizeof(U);
  char* out = data[0];
  const char* in = data[1];
  if (strides[0] == sz && strides[1] == sz) {
    for (int64_t i = 0; i < n; ++i) {
      U b;
      std::memcpy(&b, in + i * sz, sz);
      const U y = sign_bits<scalar_t>(b);
      std::memcpy(out + i * sz, &y, sz);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      U b;
      std::memcpy(&b, in + i * strides[1], sz);
      const U y = sign_bits<scalar_t>(b);
      std::memcpy(out + i * strides[0], &y, sz);
    }
  }
}

// TensorIterator hands out 2-d chunks (size0 inner x size1 outer, strides[N + a] the
// outer stride of operand a); run a 1-d loop f(data, strides, size0) on each row.
template <int N, typename F>
void for_each_1d(at::TensorIteratorBase& iter, const F& f) {
  iter.for_each([&](char** base, const int64_t* strides, int64_t size0, int64_t size1) {
    char* data[N];
    for (int a = 0; a < N; ++a) data[a] = base[a];
    for (int64_t j = 0; j < size1; ++j) {
      if (j > 0)
        for (int a = 0; a < N; ++a) data[a] += strides[N + a];
      f(data, strides, size0);
    }
  });
}

// y = sign(x), +1 at -0.0, +0.0 and NaN; same dtype and shape as x, contiguous.
at::Tensor sign_ede_cpu(const at::Tensor& x, const at::Tensor& k, const at::Tensor& t) {
  (void)k;  // k, t only matter to the backward (autograd formula)
  (void)t;
  check_float_dtype("sign_ede", "x", x);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return out;
  auto iter = at::TensorIteratorConfig().add_output(out).add_const_input(x).build();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "irnet::sign_ede", [&] {
    for_each_1d<2>(iter, sign_loop<scalar_t>);
  });
  return out;
}

// grad_x = grad * k * t * (1 - tanh(t x)^2)   (EDE; arithmetic in ede_cpu.h).
at::Tensor sign_ede_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& k,
                                 const at::Tensor& t) {
  check_float_dtype("sign_ede_backward", "grad", grad);
  TORCH_CHECK(x.scalar_type() == grad.scalar_type(), "irnet::sign_ede_backward: expected x to have grad's dtype ",
              grad.scalar_type(), ", got ", x.scalar_type());
  TORCH_CHECK(x.sizes() == grad.sizes(), "irnet::sign_ede_backward: expected x and grad of one shape, got x ",
              x.sizes(), " and grad ", grad.sizes());
  const double kd = read_scalar("sign_ede_backward", "k", k);
  const double td = read_scalar("sign_ede_backward", "t", t);
  at::Tensor out = at::empty(grad.sizes(), grad.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad.numel() == 0) return out;
  auto iter = at::TensorIteratorConfig().add_output(out).add_const_input(grad).add_const_input(x).build();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "irnet::sign_ede_backward", [&] {
    using acc_t = opmath_t<scalar_t>;
    const acc_t kk = static_cast<acc_t>(kd), tt = static_cast<acc_t>(td);
    for_each_1d<3>(iter, [&](char** data, const int64_t* strides, int64_t n) {
      constexpr int64_t sz = sizeof(scalar_t);
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        if (strides[0] == sz && strides[1] == sz && strides[2] == sz) {
          ede_contiguous<acc_t>(reinterpret_cast<const acc_t*>(data[1]), reinterpret_cast<const acc_t*>(data[2]),
                                reinterpret_cast<acc_t*>(data[0]), n, kk, tt);
          return;
        }
      }
      ede_strided<scalar_t>(data[1], strides[1], data[2], strides[2], data[0], strides[0], n, kk, tt);
    });
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace irnet

TORCH_LIBRARY_IMPL(irnet, CPU, m) {
  m.impl("sign_ede", &irnet::cpu::sign_ede_cpu);
  m.impl("sign_ede_backward", &irnet::cpu::sign_ede_backward_cpu);
}
