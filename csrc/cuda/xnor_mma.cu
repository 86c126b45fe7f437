// The tensor-core ("mma") binary convolution: mma.sync.aligned.m16n8k256 ... b1.b1.s32.and.popc.
// NEVER RUN ON A GPU: compiled for sm_80/sm_90, its SASS and resources checked
// (tests/test_cuda_static.py), and its kernel body run on the host with an emulated warp
// (csrc/tests/test_cuda_emulation.cpp).  The maths, tiles and loaders are in
// csrc/core/xnor_mma_conv.h; this file launches them.
//
// Kept in a translation unit of its own: the b1 mma exists in hardware on sm_80..sm_90,
// so a GPU whose driver cannot take this module's code affects only this path.
#include <c10/cuda/CUDAException.h>

#include <limits>

#include "common.cuh"
#include "core/xnor_mma_conv.h"
#include "device_exec.cuh"
#include "xnor_conv.cuh"

namespace irnet_cuda {
namespace {

namespace mc = irnet::core::mma_conv;
using irnet::core::GpuConvShape;

template <bool kFused, bool kChannelsLast>
__global__ void __launch_bounds__(mc::kThreads) xnor_mma_conv_kernel(const mc::Params p) {
  __shared__ mc::Shared sh;
  DeviceExec ex;
  mc::conv_block<kFused, kChannelsLast>(ex, sh, p, blockIdx.x, blockIdx.y, static_cast<int>(threadIdx.x));
}

constexpr int kPrepThreads = 256;

// The per-call prep of the mma path, one grid-stride pass over three index ranges:
//   [0, wq_words)                      the masked, zero-padded weight copy wq
//   [wq_words, + O)                    each channel's tap-popcount prefix table
//   [wq_words + O, + N*H*W)            each input pixel's popcount
__global__ void __launch_bounds__(kPrepThreads)
xnor_mma_prep_kernel(const GpuConvShape g, const uint64_t* __restrict__ x, const uint64_t* __restrict__ w,
                     uint64_t* __restrict__ wq, int kp, int64_t wq_words, int32_t* __restrict__ wprefix,
                     int32_t* __restrict__ pixpop, int64_t in_pixels) {
  const int64_t total = wq_words + g.O + in_pixels;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    if (i < wq_words) {
      wq[i] = mc::prepared_weight_word(g, w, i / kp, static_cast<int>(i % kp));
    } else if (i < wq_words + g.O) {
      const int64_t o = i - wq_words;
      mc::weight_tap_prefix(g, w, o, wprefix + o * mc::prefix_size(g));
    } else {
      const int64_t pix = i - wq_words - g.O;
      pixpop[pix] = mc::pixel_popcount(g, x, pix);
    }
  }
}

}  // namespace

void launch_mma_conv(const ConvCall& c, const at::Tensor& like, cudaStream_t stream) {
  const GpuConvShape& g = c.g;
  const int64_t gm = mc::grid_m(g), gn = mc::grid_n(g);
  TORCH_CHECK(gm <= std::numeric_limits<int32_t>::max() && gn <= 65535, "irnet::xnor_conv2d (tensor cores): ",
              "output too large for one launch (", gm, " x ", gn, " blocks)");
  const int kp = mc::padded_k_words(g);
  const int64_t wq_words = mc::padded_channels(g) * kp;
  const int64_t in_pixels = g.N * g.H * g.W;
  const auto opts = like.options();
  // scratch on the current stream's allocator: no host synchronisation
  at::Tensor wq = at::empty({wq_words}, opts.dtype(at::kLong));
  at::Tensor wprefix = at::empty({g.O * mc::prefix_size(g)}, opts.dtype(at::kInt));
  at::Tensor pixpop = at::empty({in_pixels}, opts.dtype(at::kInt));

  mc::Params p{};
  p.g = g;
  p.x = c.x;
  p.wq = reinterpret_cast<const uint64_t*>(wq.const_data_ptr<int64_t>());
  p.wprefix = wprefix.const_data_ptr<int32_t>();
  p.pixpop = pixpop.const_data_ptr<int32_t>();
  p.out = c.out;
  p.kp = kp;
  p.x_pairs = g.words % 2 == 0 && reinterpret_cast<uintptr_t>(c.x) % 16 == 0;  // 16-byte copies of A

  xnor_mma_prep_kernel<<<grid_for(wq_words + g.O + in_pixels, kPrepThreads), kPrepThreads, 0, stream>>>(
      g, c.x, c.w, reinterpret_cast<uint64_t*>(wq.mutable_data_ptr<int64_t>()), kp, wq_words,
      wprefix.mutable_data_ptr<int32_t>(), pixpop.mutable_data_ptr<int32_t>(), in_pixels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const dim3 grid(static_cast<unsigned>(gm), static_cast<unsigned>(gn));
  with_epilogue(c.fused, c.channels_last, [&](auto fused, auto channels_last) {
    xnor_mma_conv_kernel<decltype(fused)::value, decltype(channels_last)::value>
        <<<grid, mc::kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace irnet_cuda
