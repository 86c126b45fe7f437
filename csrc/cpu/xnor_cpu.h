// irnet CPU: the binary convolution driver of csrc/cpu/xnor_cpu.cpp as a C++ call, for
// the whole-network plan (csrc/cpu/net_plan.cpp), which runs the layers without a
// dispatcher call per layer and into buffers it keeps from call to call.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace irnet {
namespace cpu {

// The epilogue of irnet::xnor_conv2d_fused: y = clamp((y * alpha + beta) + residual, lo, hi).
struct FusedArgs {
  const at::Tensor& alpha;
  const at::Tensor& beta;
  const std::optional<at::Tensor>& residual;
  double lo, hi;
};

// irnet::xnor_conv2d (fused == nullptr) or irnet::xnor_conv2d_fused on the CPU, written
// into `out`: (N, O, Ho, Wo) float32, NCHW-contiguous or (channels_last) channels_last.
// Same checks and results as the ops.
void xnor_conv2d_cpu_into(const at::Tensor& x, const at::Tensor& w_bits, const std::optional<at::Tensor>& scale,
                          int64_t in_channels, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool channels_last, const FusedArgs* fused, const at::Tensor& out);

}  // namespace cpu
}  // namespace irnet
