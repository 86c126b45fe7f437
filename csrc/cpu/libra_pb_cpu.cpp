// CPU kernels of irnet::libra_pb, irnet::libra_pb_backward and irnet::libra_pb_pack.
//
// The weight w of shape (O, ...) is viewed as O channels of n = numel / O values; each
// channel is one task of at::parallel_for and is swept a few times while it sits in
// cache.  float32 and float64 are computed natively (sums in double); float16 and
// bfloat16 weights are computed in float32 and the outputs rounded to the input dtype
// (v first, then wb = sign(v_rounded) * scale, so wb and v always agree in sign).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "core/pow2.h"
#include "ede_cpu.h"

namespace irnet {
namespace cpu {
namespace {

bool is_reduced(at::ScalarType st) { return st == at::kHalf || st == at::kBFloat16; }

int64_t channel_grain(int64_t n) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(n, 1)); }

// ---------------------------------------------------------------------------------
// Libra-PB forward of one channel x[0..n):
//   mu    = mean(x)                      (shifted sum: mu = x0 + sum(x - x0) / n, in double,
//                                        so a constant channel gives mu == x0 exactly)
//   c_i   = x_i - mu                     (in scalar_t, with mu rounded to scalar_t, as the
//                                        reference's (w - w.mean()) does)
//   sigma = sqrt(sum c_i^2 / (n - 1))    (unbiased; sum in double, rounded to scalar_t)
//   v_i   = c_i / sigma                  (a true division, as the reference: the same
//                                        rounding, and sign(v) = sign(c) exactly)
//   s     = 2^round(log2(mean|v|))       (log2 and round-half-even in scalar_t, as
//                                        torch.log2/torch.round; s = 0 if mean|v| == 0)
//   wb_i  = (v_i < 0 ? -1 : +1) * s
// n == 1 or sigma == 0: v = 0, inv_sigma = 0, s = 0, wb = 0.
// The sum of sweep 1 is finite iff every weight is (NaN and Inf propagate; the
// double sum of float weights cannot overflow); only when it is not does sweep 1b look
// for the offender, so the NaN/Inf check costs nothing on good weights.
template <typename scalar_t>
void libra_pb_channel(const scalar_t* x, scalar_t* wb, scalar_t* v, int64_t n, int64_t o, scalar_t* inv_sigma_o,
                      scalar_t* scale_o) {
  const double x0 = static_cast<double>(x[0]);
  double shifted = 0.0;
  for (int64_t i = 0; i < n; ++i) shifted += static_cast<double>(x[i]) - x0;
  double mu_d = x0 + shifted / static_cast<double>(n);
  if (!std::isfinite(mu_d)) {
    for (int64_t i = 0; i < n; ++i)
      TORCH_CHECK(std::isfinite(static_cast<double>(x[i])), "irnet::libra_pb: weight channel ", o,
                  " contains NaN or Inf (element ", i, " is ", static_cast<double>(x[i]),
                  "); expected finite weights");
    // All finite but the shifted sum overflowed (float64 weights near the range limit).
    mu_d = 0.0;
    for (int64_t i = 0; i < n; ++i) mu_d += static_cast<double>(x[i]) / static_cast<double>(n);
  }
  const scalar_t mu = static_cast<scalar_t>(mu_d);

  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double c = static_cast<double>(x[i] - mu);
    ss += c * c;
  }
  const scalar_t sigma = n > 1 ? static_cast<scalar_t>(std::sqrt(ss / static_cast<double>(n - 1))) : scalar_t(0);
  if (!(sigma > scalar_t(0))) {
    for (int64_t i = 0; i < n; ++i) {
      v[i] = scalar_t(0);
      wb[i] = scalar_t(0);
    }
    *inv_sigma_o = scalar_t(0);
    *scale_o = scalar_t(0);
    return;
  }
  *inv_sigma_o = scalar_t(1) / sigma;

  double sum_abs = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t vi = (x[i] - mu) / sigma;
    v[i] = vi;
    sum_abs += std::abs(static_cast<double>(vi));
  }
  const scalar_t mean_abs = static_cast<scalar_t>(sum_abs / static_cast<double>(n));
  const scalar_t s = ::irnet::core::pow2_round(mean_abs);  // the one definition the CUDA kernel shares
  *scale_o = s;
  for (int64_t i = 0; i < n; ++i) wb[i] = v[i] < scalar_t(0) ? -s : s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> libra_pb_cpu(const at::Tensor& w_in, const at::Tensor& k,
                                                                        const at::Tensor& t) {
  (void)k;  // k and t belong to the autograd formula (libra_pb_backward)
  (void)t;
  TORCH_CHECK(w_in.dim() >= 2, "irnet::libra_pb: expected a weight of rank >= 2 (C_out, ...), got shape ",
              w_in.sizes());
  check_float_dtype("libra_pb", "w", w_in);
  if (is_reduced(w_in.scalar_type())) {
    auto [wb, v, inv_sigma, scale] = libra_pb_cpu(w_in.to(at::kFloat), k, t);
    const at::Tensor v_r = v.to(w_in.scalar_type());
    const at::Tensor s_r = scale.to(w_in.scalar_type());
    std::vector<int64_t> bshape(w_in.dim(), 1);
    bshape[0] = w_in.size(0);
    const at::Tensor s_b = s_r.view(bshape);
    at::Tensor wb_r = at::where(v_r.lt(0), -s_b, s_b).contiguous();
    return {wb_r, v_r, inv_sigma.to(w_in.scalar_type()), s_r};
  }
  const at::Tensor w = w_in.contiguous();
  const int64_t O = w.size(0);
  const int64_t n = O > 0 ? w.numel() / O : 0;
  at::Tensor wb = at::empty_like(w, at::MemoryFormat::Contiguous);
  at::Tensor v = at::empty_like(w, at::MemoryFormat::Contiguous);
  at::Tensor inv_sigma = at::zeros({O}, w.options());
  at::Tensor scale = at::zeros({O}, w.options());
  if (n == 0) return {wb, v, inv_sigma, scale};
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "irnet::libra_pb", [&] {
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
