// CPU kernels of irnet::libra_pb, irnet::libra_pb_backward and irnet::libra_pb_pack.
//
// The weight w of shape (O, ...) is viewed as O channels of n = numel / O values; each
// channel is one task of at::parallel_for and is swept a few times while it sits in
// cache.  The forward's arithmetic is csrc/core/libra_pb.h, shared with the CUDA kernel:
// float32 and float64 computed natively (sums in double, in a fixed order), float16 and
// bfloat16 in float32 with the outputs rounded to the input dtype (v first, then
// wb = sign(v_rounded) * scale, so wb and v always agree in sign).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "core/libra_pb.h"
#include "ede_cpu.h"

namespace irnet {
namespace cpu {
namespace {

bool is_reduced(at::ScalarType st) { return st == at::kHalf || st == at::kBFloat16; }

int64_t channel_grain(int64_t n) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(n, 1)); }

// ---------------------------------------------------------------------------------
// Libra-PB forward of one channel: the rule of csrc/core/libra_pb.h (shared with the CUDA
// kernel, which gives the same bits), run with every lane on this thread.  A channel the
// rule reports as non-finite raises here, naming the offending weight.
template <typename scalar_t>
void libra_pb_channel(const scalar_t* x, scalar_t* wb, scalar_t* v, int64_t n, int64_t o, scalar_t* inv_sigma_o,
                      scalar_t* scale_o) {
  namespace lp = ::irnet::core::libra_pb;
  const lp::ChannelResult<scalar_t> r = lp::standardize_channel<scalar_t>(x, wb, v, n, lp::SerialLanes{});
  if (r.status == lp::ChannelStatus::kNonFinite) {
    for (int64_t i = 0; i < n; ++i)
      TORCH_CHECK(std::isfinite(static_cast<double>(x[i])), "irnet::libra_pb: weight channel ", o,
                  " contains NaN or Inf (element ", i, " is ", static_cast<double>(x[i]),
                  "); expected finite weights");
    TORCH_CHECK(false, "irnet::libra_pb: weight channel ", o, " cannot be standardized: its values are finite but ",
                "so close to the largest ", c10::CppTypeToScalarType<scalar_t>::value,
                " that their mean or their distance to it overflows; expected weights well inside the range");
  }
  *inv_sigma_o = r.inv_sigma;
  *scale_o = r.scale;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> libra_pb_cpu(const at::Tensor& w_in, const at::Tensor& k,
                                                                        const at::Tensor& t) {
  (void)k;  // k and t belong to the autograd formula (libra_pb_backward)
  (void)t;
  TORCH_CHECK(w_in.dim() >= 2, "irnet::libra_pb: expected a weight of rank >= 2 (C_out, ...), got shape ",
              w_in.sizes());
  check_float_dtype("libra_pb", "w", w_in);
  const at::Tensor w = w_in.contiguous();
  const int64_t O = w.size(0);
  const int64_t n = O > 0 ? w.numel() / O : 0;
  at::Tensor wb = at::empty_like(w, at::MemoryFormat::Contiguous);
  at::Tensor v = at::empty_like(w, at::MemoryFormat::Contiguous);
  at::Tensor inv_sigma = at::empty({O}, w.options());
  at::Tensor scale = at::empty({O}, w.options());
  // float16 / bfloat16 weights run the same rule with float32 arithmetic inside
  // (core/libra_pb.h: compute_t), their outputs rounded once.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "irnet::libra_pb", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* wbp = wb.mutable_data_ptr<scalar_t>();
    scalar_t* vp = v.mutable_data_ptr<scalar_t>();
    scalar_t* ip = inv_sigma.mutable_data_ptr<scalar_t>();
    scalar_t* sp = scale.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, O, channel_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o)
        libra_pb_channel<scalar_t>(wp + o * n, wbp + o * n, vp + o * n, n, o, ip + o, sp + o);
    });
  });
  return {wb, v, inv_sigma, scale};
}

// ---------------------------------------------------------------------------------
// Libra-PB backward of one channel (n values), the closed form of d wb / d w:
//   g_i    = grad_i * s * k * t * (1 - tanh(t v_i)^2)      EDE through sign(v)
//   grad_w = inv_sigma * (g - mean(g) - v * sum(g v) / (n - 1))
// The second line is the Jacobian of v = (w - mu) / sigma (sigma unbiased): with
// dv_i/dw_j = (delta_ij - 1/n - v_i v_j / (n - 1)) / sigma, so
// sum_i g_i dv_i/dw_j = (g_j - mean(g) - v_j sum_i g_i v_i / (n - 1)) / sigma.
// Sweep 1 writes g (the EDE factor through the vectorized routine, then times the
// power of two s: ((grad*s)*k)*t == ((grad*k)*t)*s exactly) and sums g and g*v in
// double; sweep 2 forms grad_w in place.  inv_sigma == 0 (degenerate channel) gives 0.
template <typename scalar_t>
void libra_pb_backward_channel(const scalar_t* grad, const scalar_t* v, scalar_t* out, int64_t n, scalar_t inv_sigma,
                               scalar_t s, scalar_t k, scalar_t t) {
  if (inv_sigma == scalar_t(0)) {
    for (int64_t i = 0; i < n; ++i) out[i] = scalar_t(0);
    return;
  }
  ede_contiguous<scalar_t>(grad, v, out, n, k, t);
  double sum_g = 0.0, sum_gv = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t g = out[i] * s;
    out[i] = g;
    sum_g += static_cast<double>(g);
    sum_gv += static_cast<double>(g) * static_cast<double>(v[i]);
  }
  const scalar_t mean_g = static_cast<scalar_t>(sum_g / static_cast<double>(n));
  const scalar_t sgv = static_cast<scalar_t>(sum_gv);
  const scalar_t denom = static_cast<scalar_t>(std::max<int64_t>(n - 1, 1));
  for (int64_t i = 0; i < n; ++i) out[i] = ((out[i] - mean_g) - (v[i] * sgv) / denom) * inv_sigma;
}

at::Tensor libra_pb_backward_cpu(const at::Tensor& grad_wb, const at::Tensor& v_in, const at::Tensor& inv_sigma_in,
                                 const at::Tensor& scale_in, const at::Tensor& k, const at::Tensor& t) {
  constexpr const char* op = "libra_pb_backward";
  check_float_dtype(op, "grad_wb", grad_wb);
  TORCH_CHECK(grad_wb.dim() >= 2, "irnet::libra_pb_backward: expected grad_wb of rank >= 2 (C_out, ...), got shape ",
              grad_wb.sizes());
  TORCH_CHECK(v_in.sizes() == grad_wb.sizes(), "irnet::libra_pb_backward: expected v of grad_wb's shape ",
              grad_wb.sizes(), ", got ", v_in.sizes());
  const int64_t O = grad_wb.size(0);
  TORCH_CHECK(inv_sigma_in.dim() == 1 && inv_sigma_in.size(0) == O && scale_in.dim() == 1 && scale_in.size(0) == O,
              "irnet::libra_pb_backward: expected inv_sigma and scale of shape (", O, "), got ", inv_sigma_in.sizes(),
              " and ", scale_in.sizes());
  const auto st = grad_wb.scalar_type();
  TORCH_CHECK(v_in.scalar_type() == st && inv_sigma_in.scalar_type() == st && scale_in.scalar_type() == st,
              "irnet::libra_pb_backward: expected v, inv_sigma and scale of grad_wb's dtype ", st, ", got ",
              v_in.scalar_type(), ", ", inv_sigma_in.scalar_type(), ", ", scale_in.scalar_type());
  const double kd = read_scalar(op, "k", k);
  const double td = read_scalar(op, "t", t);
  if (is_reduced(st)) {
    const auto f = [](const at::Tensor& x) { return x.to(at::kFloat); };
    return libra_pb_backward_cpu(f(grad_wb), f(v_in), f(inv_sigma_in), f(scale_in), f(k), f(t)).to(st);
  }
  const at::Tensor g = grad_wb.contiguous(), v = v_in.contiguous();
  const at::Tensor inv_sigma = inv_sigma_in.contiguous(), scale = scale_in.contiguous();
  const int64_t n = O > 0 ? g.numel() / O : 0;
  at::Tensor out = at::empty_like(g, at::MemoryFormat::Contiguous);
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(st, "irnet::libra_pb_backward", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const scalar_t* ip = inv_sigma.const_data_ptr<scalar_t>();
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const scalar_t kk = static_cast<scalar_t>(kd), tt = static_cast<scalar_t>(td);
    at::parallel_for(0, O, channel_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o)
        libra_pb_backward_channel<scalar_t>(gp + o * n, vp + o * n, op_ + o * n, n, ip[o], sp[o], kk, tt);
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------
// Deployment: (pack_bits(v), scale).  sign(v) packs exactly as sign(wb) would (bit = v < 0);
// pack_bits is called through the dispatcher, whichever kernel (compiled or the Python
// reference) serves it.
std::tuple<at::Tensor, at::Tensor> libra_pb_pack_cpu(const at::Tensor& w) {
  TORCH_CHECK(w.dim() >= 2, "irnet::libra_pb_pack: expected a weight of rank >= 2 (C_out, C_in, ...), got shape ",
              w.sizes());
  check_float_dtype("libra_pb_pack", "w", w);
  const at::Tensor none = at::empty({0}, w.options());
  auto parts = libra_pb_cpu(w, none, none);
  static const auto pack_bits = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("irnet::pack_bits", "")
                                    .typed<at::Tensor(const at::Tensor&)>();
  return {pack_bits.call(std::get<1>(parts)), std::get<3>(parts)};
}

}  // namespace
}  // namespace cpu
}  // namespace irnet

TORCH_LIBRARY_IMPL(irnet, CPU, m) {
  m.impl("libra_pb", &irnet::cpu::libra_pb_cpu);
  m.impl("libra_pb_backward", &irnet::cpu::libra_pb_backward_cpu);
  m.impl("libra_pb_pack", &irnet::cpu::libra_pb_pack_cpu);
}
