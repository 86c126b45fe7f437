// irnet training ops on CUDA: sign_ede, sign_ede_backward, libra_pb,
// libra_pb_backward, libra_pb_pack.  NEVER RUN ON A GPU: compiled for sm_80/sm_90,
// statically checked, and the Libra-PB kernels (csrc/cuda/libra_pb_kernels.cuh) run on
// the host by the ctest test_libra_pb_emulation against the CPU kernel's rule.
//
// Every kernel is launched on the current stream and checked; k and t (EDE) are
// one-element CUDA tensors read in device memory: no op here synchronises with the host.
//
// NaN/Inf weights (the CPU kernel raises at once).  Checking on the host would need a
// synchronisation, so on CUDA: the channel's wb, v, inv_sigma and scale are NaN (never a
// valid +-scale weight), and the kernel stores the channel in a flag of mapped pinned
// host memory (nonfinite_flag() below).  Every libra_pb / libra_pb_pack call first reads that
// flag (a host memory read, no CUDA call): once an earlier kernel has set it, the call
// clears it and raises the CPU kernel's RuntimeError.  So the error comes at the first
// libra_pb call after that kernel has run (in a training loop: the next step's forward,
// or sooner), not at the call whose weight was bad.
#include <torch/library.h>

#include "common.cuh"
#include "libra_pb_kernels.cuh"

namespace irnet_cuda {
namespace {

constexpr int kEltThreads = 256;
using libra::ede;
using libra::kLanes;

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

at::ScalarType opmath_scalar_type(at::ScalarType s) { return s == at::kDouble ? at::kDouble : at::kFloat; }

void check_weight(const char* op, const char* name, const at::Tensor& w) {
  check_cuda(op, name, w);
  check_floating(op, name, w);
  TORCH_CHECK(w.dim() >= 2, "irnet::", op, ": expected ", name, " of rank >= 2 (C_out, ...), got shape ", w.sizes());
}

// The NaN/Inf report of libra_pb_kernel: one int of mapped, portable pinned host memory
// (0: nothing to report; c + 1: channel c of some weight was not finite), allocated at the
// first Libra-PB call and kept for the life of the process.  Under unified virtual
// addressing (every 64-bit CUDA platform) its host address is also its device address on
// every GPU, so kernels on any device write it and the host reads it with a plain load.
volatile int* nonfinite_flag() {
  static volatile int* const flag = [] {
    void* host = nullptr;
    C10_CUDA_CHECK(cudaHostAlloc(&host, sizeof(int), cudaHostAllocPortable | cudaHostAllocMapped));
    void* device = nullptr;
    C10_CUDA_CHECK(cudaHostGetDevicePointer(&device, host, 0));
    TORCH_CHECK(device == host, "irnet::libra_pb: expected unified virtual addressing (a mapped host pointer equal to ",
                "its device pointer); this platform gives ", host, " and ", device);
    *static_cast<volatile int*>(host) = 0;
    return static_cast<volatile int*>(host);
  }();
  return flag;
}

// Raises the CPU kernel's error for a non-finite channel that an earlier kernel reported
// (and clears the report, so that a caller who repairs the weights can go on).
void raise_reported_nonfinite(const char* op) {
  volatile int* flag = nonfinite_flag();
  const int reported = *flag;
  if (reported == 0) return;
  *flag = 0;
  TORCH_CHECK(false, "irnet::", op, ": weight channel ", reported - 1,
              " contains NaN or Inf; expected finite weights (found by the CUDA kernel of an earlier libra_pb or "
              "libra_pb_pack call, which made that channel's wb, v, inv_sigma and scale NaN; CUDA reports it at "
              "the next call, since checking at once would synchronise with the host)");
}

// v, inv_sigma, scale and (if with_wb) wb of Libra-PB, launched on the current stream.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> libra_pb_forward(const char* op, const at::Tensor& w_in,
                                                                            bool with_wb) {
  raise_reported_nonfinite(op);
  const at::Tensor w = w_in.contiguous();
  const int64_t O = w.size(0);
  const int64_t n = O == 0 ? 0 : w.numel() / O;
  at::Tensor wb = with_wb ? at::empty(w.sizes(), w.options()) : at::Tensor();
  at::Tensor v = at::empty(w.sizes(), w.options());
  at::Tensor inv_sigma = at::empty({O}, w.options());
  at::Tensor scale = at::empty({O}, w.options());
  if (O == 0) return {wb, v, inv_sigma, scale};
  TORCH_CHECK(O <= std::numeric_limits<int32_t>::max(), "irnet::", op,
              ": expected fewer than 2^31 output channels, got ", O);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // (n == 0, an (O, 0, ...) weight, launches too: the kernel gives inv_sigma = scale = 0.)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "irnet_libra_pb_cuda", [&] {
    libra::libra_pb_kernel<scalar_t><<<static_cast<unsigned>(O), kLanes, 0, stream>>>(
        w.const_data_ptr<scalar_t>(), with_wb ? wb.mutable_data_ptr<scalar_t>() : nullptr,
        v.mutable_data_ptr<scalar_t>(), inv_sigma.mutable_data_ptr<scalar_t>(), scale.mutable_data_ptr<scalar_t>(), n,
        nonfinite_flag());
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
  return libra_pb_forward(op, w, /*with_wb=*/true);
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
    libra::libra_pb_backward_kernel<scalar_t, opmath_t><<<static_cast<unsigned>(O), kLanes, 0, stream>>>(
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
  auto parts = libra_pb_forward("libra_pb_pack", w, /*with_wb=*/false);
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
