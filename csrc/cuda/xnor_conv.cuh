// The two CUDA binary convolutions behind irnet::xnor_conv2d, xnor_conv2d_fused and
// xnor_linear (csrc/cuda/xnor.cu checks the arguments and picks one of them):
//   popc  CUDA cores, XNOR + popcount (csrc/core/xnor_popc_conv.h, launched in xnor.cu)
//   mma   1-bit tensor cores, AND + popcount (csrc/core/xnor_mma_conv.h, xnor_mma.cu)
// Both compute the same integers and round the output the same way (bit-exact).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "core/gpu_conv.h"

namespace irnet_cuda {

// One checked conv call: operands (device pointers into contiguous tensors), output.
struct ConvCall {
  irnet::core::GpuConvShape g;
  const uint64_t* x;  // (N, H, W, words)
  const uint64_t* w;  // (O, kh, kw, words)
  irnet::core::ConvEpilogue out;
  bool fused;
  bool channels_last;
};

// Runs f(std::bool_constant<fused>, std::bool_constant<channels_last>): the one place the
// run-time epilogue choice becomes a template instantiation of a kernel.
template <class F>
void with_epilogue(bool fused, bool channels_last, F&& f) {
  if (fused) {
    if (channels_last) f(std::true_type{}, std::true_type{});
    else f(std::true_type{}, std::false_type{});
  } else {
    if (channels_last) f(std::false_type{}, std::true_type{});
    else f(std::false_type{}, std::false_type{});
  }
}

// The tensor-core path (xnor_mma.cu): its prep pass and the conv kernel on `stream`.
// `like` gives the device for the scratch tensors.
void launch_mma_conv(const ConvCall& c, const at::Tensor& like, cudaStream_t stream);

}  // namespace irnet_cuda
