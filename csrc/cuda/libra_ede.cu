// irnet training ops on CUDA: sign_ede, sign_ede_backward, libra_pb,
// libra_pb_backward, libra_pb_pack.  NEVER RUN ON A GPU: compiled for sm_80/sm_90
// and statically checked only (see tests/test_cuda_ops.py).
//
// k and t (EDE) are one-element CUDA tensors; the kernels read them from device memory,
// so no op here synchronises with the host.
//
// NaN/Inf: unlike the CPU path, these kernels do NOT check their input for NaN/Inf
// (that would need a host sync).  Non-finite weights propagate as in the reference
// (NaN v, NaN scale); irnet.ops.libra_pb_pack / pack_*_weight check finiteness in Python.
#include <torch/library.h>

#include "common.cuh"
#include "core/pow2.h"

namespace irnet_cuda {
namespace {

constexpr int kEltThreads = 256;
constexpr int kLibraThreads = 256;

__device__ __forceinline__ float dev_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double dev_tanh(double v) { return tanh(v); }

// EDE derivative with the reference's order of operations:
//   grad * k * t * (1 - tanh(x * t)^2)        (in op-math precision: float or double)
template <typename opmath_t>
__device__ __forceinline__ opmath_t ede(opmath_t grad, opmath_t x, opmath_t k, opmath_t t) {
  const opmath_t th = dev_tanh(x * t);
  return grad * k * t * (opmath_t(1) - th * th);
}

// y = sign(x) = -1 if x < 0 else +1 (so -0.0 -> +1, NaN -> +1), in x's dtype.
template <typename scalar_t>
__global__ void __launch_bounds__(kEltThreads)
sign_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = sign_bit(x[i]) ? scalar_t(-1) : scalar_t(1);
}

// out = grad * k * t * (1 - tanh(t x)^2), computed in op-math precision.
template <typename scalar_t, typename opmath_t>
__global__ void __launch_bounds__(kEltThreads)
ede_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x, const opmath_t* __restrict__ kp,
                const opmath_t* __restrict__ tp, scalar_t* __restrict__ out, int64_t n) {
  const opmath_t k = *kp;
  const opmath_t t = *tp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = static_cast<scalar_t>(ede(static_cast<opmath_t>(grad[i]), static_cast<opmath_t>(x[i]), k, t));
}

// Libra-PB forward, one block per output channel o over its n weights (double sums):
//   mu = sum(w)/n;  sigma = sqrt(sum((w - mu)^2) / (n - 1))   (two passes; sigma = 0 if n == 1)
//   v = (w - mu) / sigma, or 0 where sigma == 0;  inv_sigma = 1/sigma, or 0
//   m = mean|v| (of the v stored in scalar_t);  scale = 2^nearbyint(log2 m) in scalar_t's precision, 0 if m == 0
//   wb = sign(v) * scale   (skipped when wb == nullptr: libra_pb_pack).
// nearbyint rounds half to even, like torch.round in the reference.
template <typename scalar_t>
__global__ void __launch_bounds__(kLibraThreads)
libra_pb_kernel(const scalar_t* __restrict__ w, scalar_t* __restrict__ wb, scalar_t* __restrict__ v,
                scalar_t* __restrict__ inv_sigma, scalar_t* __restrict__ scale, int64_t n) {
  __shared__ double red[32];
  const int64_t o = blockIdx.x;
  const scalar_t* wo = w + o * n;
  scalar_t* vo = v + o * n;

  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += static_cast<double>(wo[i]);
  const double mu = block_sum(s, red) / static_cast<double>(n);

  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = static_cast<double>(wo[i]) - mu;
    ss += d * d;
  }
  ss = block_sum(ss, red);
  const double sigma = n > 1 ? sqrt(ss / static_cast<double>(n - 1)) : 0.0;
  const bool degenerate = sigma == 0.0;  // NaN sigma (non-finite w) is not degenerate, as in the reference

  double sabs = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const scalar_t vi =
        degenerate ? scalar_t(0) : static_cast<scalar_t>((static_cast<double>(wo[i]) - mu) / sigma);
    vo[i] = vi;
    sabs += fabs(static_cast<double>(vi));
  }
  // mean|v| rounded to the weight's precision, then the power of two in that precision
  // (float for half types), exactly as the reference and the CPU kernel compute it.
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t m = static_cast<opmath_t>(static_cast<scalar_t>(block_sum(sabs, red) / static_cast<double>(n)));
  const double sc = static_cast<double>(::irnet::core::pow2_round(m));
  if (threadIdx.x == 0) {
    inv_sigma[o] = degenerate ? scalar_t(0) : static_cast<scalar_t>(1.0 / sigma);
    scale[o] = static_cast<scalar_t>(sc);
  }
  if (wb != nullptr) {
    const scalar_t pos = static_cast<scalar_t>(sc);
    const scalar_t neg = static_cast<scalar_t>(-sc);
    scalar_t* wbo = wb + o * n;
    // Each thread re-reads only the v it wrote itself above: no barrier needed.
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) wbo[i] = sign_bit(vo[i]) ? neg : pos;
  }
}

// Libra-PB backward (closed form), one block per output channel o over its n weights:
//   g_i    = (grad_i * s) * k * t * (1 - tanh(t v_i)^2)           (EDE through sign, times scale)
//   grad_w = inv_sigma * (g - mean(g) - v * sum(g v) / max(n - 1, 1))
// (the Jacobian of v = (w - mean) / std_unbiased applied to g).  Sums in double.
template <typename scalar_t, typename opmath_t>
__global__ void __launch_bounds__(kLibraThreads)
libra_pb_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ v,
                         const opmath_t* __restrict__ inv_sigma, const opmath_t* __restrict__ scale,
                         const opmath_t* __restrict__ kp, const opmath_t* __restrict__ tp,
                         scalar_t* __restrict__ out, int64_t n) {
  __shared__ double red[32];
  const int64_t o = blockIdx.x;
  const scalar_t* go = grad + o * n;
  const scalar_t* vo = v + o * n;
  const opmath_t s = scale[o];
  const opmath_t k = *kp;
  const opmath_t t = *tp;

  double sg = 0.0, sgv = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const opmath_t vi = static_cast<opmath_t>(vo[i]);
    const double g = static_cast<double>(ede(static_cast<opmath_t>(go[i]) * s, vi, k, t));
    sg += g;
    sgv += g * static_cast<double>(vi);
  }
  const double mean_g = block_sum(sg, red) / static_cast<double>(n);
  const double coef = block_sum(sgv, red) / static_cast<double>(n > 1 ? n - 1 : 1);
  const double isg = static_cast<double>(inv_sigma[o]);

  scalar_t* oo = out + o * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const opmath_t vi = static_cast<opmath_t>(vo[i]);
    const double g = static_cast<double>(ede(static_cast<opmath_t>(go[i]) * s, vi, k, t));
    oo[i] = static_cast<scalar_t>(isg * (g - mean_g - static_cast<double>(vi) * coef));
  }
}

at::ScalarType opmath_scalar_type(at::ScalarType s) { return s == at::kDouble ? at::kDouble : at::kFloat; }

void check_weight(const char* op, const char* name, const at::Tensor& w) {
  check_cuda(op, name, w);
  check_floating(op, name, w);
  TORCH_CHECK(w.dim() >= 2, "irnet::", op, ": expected ", name, " of rank >= 2 (C_out, ...), got shape ", w.sizes());
}

// v, inv_sigma, scale and (if with_wb) wb of Libra-PB, launched on the current stream.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> libra_pb_forward(const at::Tensor& w_in, bool with_wb) {
  const at::Tensor w = w_in.contiguous();
  const int64_t O = w.size(0);
  const int64_t n = O == 0 ? 0 : w.numel() / O;
  at::Tensor wb = with_wb ? at::empty(w.sizes(), w.options()) : at::Tensor();
  at::Tensor v = at::empty(w.sizes(), w.options());
  at::Tensor inv_sigma = at::empty({O}, w.options());
  at::Tensor scale = at::empty({O}, w.options());
  if (O == 0) return {wb, v, inv_sigma, scale};
  TORCH_CHECK(O <= std::numeric_limits<int32_t>::max(),
              "irnet::libra_pb: expected fewer than 2^31 output channels, got ", O);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "irnet_libra_pb_cuda", [&] {
    libra_pb_kernel<scalar_t><<<static_cast<unsigned>(O), kLibraThreads, 0, stream>>>(
        w.const_data_ptr<scalar_t>(), with_wb ? wb.mutable_data_ptr<scalar_t>() : nullptr,
        v.mutable_data_ptr<scalar_t>(), inv_sigma.mutable_data_ptr<scalar_t>(), scale.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {wb, v, inv_sigma, scale};
}

}  // namespace

at::Tensor sign_ede_cuda(const at::Tensor& x, const at::Tensor& k, const at::Tensor& t) {
  const char* op = "sign_ede";
  check_cuda(op, "x", x);
  check_floating(op, "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  // k and t are not used by the forward; they are still checked like in the backward.
  check_ede_param(op, "k", k, "x", x);
  check_ede_param(op, "t", t, "x", x);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  const int64_t n = xc.numel();
  if (n == 0) return y;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "irnet_sign_ede_cuda", [&] {
    sign_kernel<scalar_t><<<grid_for(n, kEltThreads), kEltThreads, 0, stream>>>(xc.const_data_ptr<scalar_t>(),
                                                                              y.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor sign_ede_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& k,
                                  const at::Tensor& t) {
  const char* op = "sign_ede_backward";
  check_cuda(op, "grad", grad);
  check_floating(op, "grad", grad);
  check_same_device(op, "x", x, "grad", grad);
  check_dtype(op, "x", x, grad.scalar_type());
  TORCH_CHECK(x.sizes() == grad.sizes(), "irnet::sign_ede_backward: expected x of the shape of grad ", grad.sizes(),
              ", got ", x.sizes());
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::ScalarType acc = opmath_scalar_type(grad.scalar_type());
  const at::Tensor kd = ede_param(op, "k", k, "grad", grad, acc);
  const at::Tensor td = ede_param(op, "t", t, "grad", grad, acc);
  const at::Tensor gc = grad.contiguous();
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(grad.sizes(), grad.options());
  const int64_t n = gc.numel();
  if (n == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "irnet_sign_ede_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    ede_grad_kernel<scalar_t, opmath_t><<<grid_for(n, kEltThreads), kEltThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), kd.const_data_ptr<opmath_t>(),
        td.const_data_ptr<opmath_t>(), out.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> libra_pb_cuda(const at::Tensor& w, const at::Tensor& k,
                                                                       const at::Tensor& t) {
  const char* op = "libra_pb";
  check_weight(op, "w", w);
  const c10::cuda::CUDAGuard guard(w.device());
  // The forward does not use k and t (they only shape the backward); checked all the same.
  check_ede_param(op, "k", k, "w", w);
  check_ede_param(op, "t", t, "w", w);
  return libra_pb_forward(w, /*with_wb=*/true);
}

at::Tensor libra_pb_backward_cuda(const at::Tensor& grad_wb, const at::Tensor& v, const at::Tensor& inv_sigma,
                                  const at::Tensor& scale, const at::Tensor& k, const at::Tensor& t) {
  const char* op = "libra_pb_backward";
  check_weight(op, "grad_wb", grad_wb);
  check_same_device(op, "v", v, "grad_wb", grad_wb);
  check_dtype(op, "v", v, grad_wb.scalar_type());
  TORCH_CHECK(v.sizes() == grad_wb.sizes(), "irnet::libra_pb_backward: expected v of the shape of grad_wb ",
              grad_wb.sizes(), ", got ", v.sizes());
  const int64_t O = grad_wb.size(0);
  const at::ScalarType acc = opmath_scalar_type(grad_wb.scalar_type());
  for (const auto& [name, p] : {std::pair<const char*, const at::Tensor*>{"inv_sigma", &inv_sigma},
                                std::pair<const char*, const at::Tensor*>{"scale", &scale}}) {
    check_same_device(op, name, *p, "grad_wb", grad_wb);
    check_floating(op, name, *p);
    TORCH_CHECK(p->dim() == 1 && p->size(0) == O, "irnet::libra_pb_backward: expected ", name, " of shape (", O,
                ",) (one entry per output channel), got shape ", p->sizes());
  }
  const c10::cuda::CUDAGuard guard(grad_wb.device());
  const at::Tensor kd = ede_param(op, "k", k, "grad_wb", grad_wb, acc);
  const at::Tensor td = ede_param(op, "t", t, "grad_wb", grad_wb, acc);
  const at::Tensor isd = inv_sigma.to(acc).contiguous();
  const at::Tensor scd = scale.to(acc).contiguous();
  const at::Tensor gc = grad_wb.contiguous();
  const at::Tensor vc = v.contiguous();
  at::Tensor out = at::empty(grad_wb.sizes(), grad_wb.options());
  if (O == 0) return out;
  TORCH_CHECK(O <= std::numeric_limits<int32_t>::max(),
              "irnet::libra_pb_backward: expected fewer than 2^31 output channels, got ", O);
  const int64_t n = gc.numel() / O;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_wb.scalar_type(), "irnet_libra_pb_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    libra_pb_backward_kernel<scalar_t, opmath_t><<<static_cast<unsigned>(O), kLibraThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(), isd.const_data_ptr<opmath_t>(),
        scd.const_data_ptr<opmath_t>(), kd.const_data_ptr<opmath_t>(), td.const_data_ptr<opmath_t>(),
        out.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> libra_pb_pack_cuda(const at::Tensor& w) {
  check_weight("libra_pb_pack", "w", w);
  const c10::cuda::CUDAGuard guard(w.device());
  auto parts = libra_pb_forward(w, /*with_wb=*/false);
  // bits of sign(v): (C_out, C_in, *K) -> (C_out, *K, ceil(C_in/64)), on the same stream.
  return {pack_bits_cuda(std::get<1>(parts)), std::get<3>(parts)};
}

}  // namespace irnet_cuda

TORCH_LIBRARY_IMPL(irnet, CUDA, m) {
  m.impl("sign_ede", &irnet_cuda::sign_ede_cuda);
  m.impl("sign_ede_backward", &irnet_cuda::sign_ede_backward_cuda);
  m.impl("libra_pb", &irnet_cuda::libra_pb_cuda);
  m.impl("libra_pb_backward", &irnet_cuda::libra_pb_backward_cuda);
  m.impl("libra_pb_pack", &irnet_cuda::libra_pb_pack_cuda);
}
