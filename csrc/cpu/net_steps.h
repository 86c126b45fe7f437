// irnet CPU: the non-binary steps of a whole-network plan (csrc/cpu/net_plan.cpp) that
// PyTorch has no single fast op for: max pooling with the clamp or BatchNorm + clamp that
// follows it, and the option-A shortcut of the CIFAR ResNets.  Each step gives exactly
// what the PyTorch ops it replaces give (max and copies are exact; the affine is one
// float32 multiply and one add, as PyTorch's `y * a + b`, with -ffp-contract=off), so a
// plan and the packed model run module by module agree bit for bit.
#pragma once

#include <ATen/ATen.h>

namespace irnet {
namespace cpu {

// What follows a max pool in the same pass, per output value v of channel c:
//   v = clamp(v * alpha[c] + beta[c], lo, hi)   (alpha, beta: a folded BatchNorm), or
//   v = clamp(v, lo, hi)                         (alpha null), or v as it is (no clamp).
// clamp keeps a NaN (as torch.clamp / hardtanh do).
struct PoolEpilogue {
  const float* alpha = nullptr;
  const float* beta = nullptr;
  bool clamp = false;
  float lo = 0.0f, hi = 0.0f;
};

// out = max_pool2d(x, kernel, stride, padding) (dilation 1, floor mode, -inf padding; a
// NaN in a window gives NaN, as PyTorch's CPU kernel) followed by `epi`.  x: float32
// (N, C, H, W) NCHW-contiguous or channels_last; out: (N, C, Ho, Wo) float32 in the same
// layout as x.
void max_pool2d_into(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                     const PoolEpilogue& epi, const at::Tensor& out);

// The option-A shortcut (irnet.models.blocks.OptionAShortcut): subsample by `stride` and
// pad the channels with zeros, pad_lo before and pad_hi after:
//   out[n, c, h, w] = x[n, c - pad_lo, h * stride, w * stride] for pad_lo <= c < pad_lo + C, else +0.0.
// x float32 NCHW-contiguous or channels_last; out (N, C + pad_lo + pad_hi, ceil(H/s), ceil(W/s)) in x's layout.
void option_a_shortcut_into(const at::Tensor& x, int64_t stride, int64_t pad_lo, int64_t pad_hi, const at::Tensor& out);

// Whether a 4-d tensor is channels_last and not also NCHW-contiguous (a tensor with
// C == 1 or H == W == 1 is both; the plan's steps treat it as NCHW).
bool channels_last_layout(const at::Tensor& t);

// The memory format a step's output takes from its input: channels_last or NCHW.
inline at::MemoryFormat layout_of(const at::Tensor& t) {
  return channels_last_layout(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// x = clamp(x, lo, hi) in place (float32, any contiguous layout); NaN stays NaN.
void clamp_inplace(const at::Tensor& x, float lo, float hi);

}  // namespace cpu
}  // namespace irnet
