// irnet::pack_bits on CUDA.  NEVER RUN ON A GPU: compiled and statically checked only.
//
// (N, C, *S) float -> (N, *S, W) int64 with W = ceil(C/64):
//   out[n, s, j] bit b = (x[n, 64 j + b, s] < 0)   for 64 j + b < C, else 0.
// Two kernels, chosen by the memory layout of x so that the reads are coalesced:
//   * channels innermost (x viewed as rows (N*S, C), i.e. channels-last or rank 2):
//     one warp builds one word with two __ballot_sync (lanes = 32 consecutive channels);
//   * channels strided by S (plain NCHW-contiguous): one thread builds the word of one
//     spatial position, reading 64 channels S apart; neighbouring threads read
//     neighbouring positions, so each of the 64 loads is coalesced across the warp.
#include <torch/library.h>

#include "common.cuh"

namespace irnet_cuda {
namespace {

constexpr int kPackThreads = 256;

// Rows layout: x is (R, C) row-major, out is (R, W).  Warp g handles word g of the
// flattened (R, W) output: lanes read channels 64j+lane and 64j+32+lane of row r,
// ballot k gives bits 32k..32k+31.  The loop bound is warp-uniform (every lane of a
// warp has the same g), so the full-mask ballots are well defined.
template <typename scalar_t>
__global__ void __launch_bounds__(kPackThreads)
pack_rows_kernel(const scalar_t* __restrict__ x, int64_t* __restrict__ out, int64_t rows, int64_t channels,
                 int64_t words) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_grid = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int64_t total = rows * words;
  for (int64_t g = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; g < total;
       g += warps_per_grid) {
    const int64_t r = g / words;
    const int64_t j = g - r * words;
    const int64_t c0 = j * kWordBits + lane;
    const scalar_t* row = x + r * channels;
    const bool lo = c0 < channels && sign_bit(row[c0]);
    const bool hi = c0 + 32 < channels && sign_bit(row[c0 + 32]);
    const unsigned b_lo = __ballot_sync(kFullMask, lo);
    const unsigned b_hi = __ballot_sync(kFullMask, hi);
    if (lane == 0) out[g] = static_cast<int64_t>((static_cast<uint64_t>(b_hi) << 32) | b_lo);
  }
}

// Planar layout: x is (N, C, S) contiguous, out is (N, S, W).  Thread i handles
// (n, j, s) with s fastest, so a warp reads 32 consecutive positions of one channel.
template <typename scalar_t>
__global__ void __launch_bounds__(kPackThreads)
pack_planar_kernel(const scalar_t* __restrict__ x, int64_t* __restrict__ out, int64_t batch, int64_t channels,
                   int64_t spatial, int64_t words) {
  const int64_t total = batch * words * spatial;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t s = i % spatial;
    const int64_t nj = i / spatial;
    const int64_t j = nj % words;
    const int64_t n = nj / words;
    const int64_t c0 = j * kWordBits;
    const int nbits = static_cast<int>(channels - c0 < kWordBits ? channels - c0 : kWordBits);
    const scalar_t* p = x + (n * channels + c0) * spatial + s;
    uint64_t word = 0;
#pragma unroll 8
    for (int b = 0; b < nbits; ++b) word |= static_cast<uint64_t>(sign_bit(p[b * spatial])) << b;
    out[(n * spatial + s) * words + j] = static_cast<int64_t>(word);
  }
}

}  // namespace

at::Tensor pack_bits_cuda(const at::Tensor& x) {
  const char* op = "pack_bits";
  check_cuda(op, "x", x);
  check_floating(op, "x", x);
  TORCH_CHECK(x.dim() >= 2, "irnet::pack_bits: expected x of rank >= 2 (N, C, ...), got shape ", x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());

  const int64_t batch = x.size(0);
  const int64_t channels = x.size(1);
  const int64_t words = words_for(channels);
  std::vector<int64_t> out_shape;
  out_shape.push_back(batch);
  for (int64_t d = 2; d < x.dim(); ++d) out_shape.push_back(x.size(d));
  out_shape.push_back(words);
  at::Tensor out = at::empty(out_shape, x.options().dtype(at::kLong));
  if (out.numel() == 0) return out;  // N == 0, C == 0 or an empty spatial dim: no launch
  const int64_t spatial = x.numel() / (batch * channels);  // > 0 here

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // Channels innermost in memory (rank 2, channels-last, or S == 1): the ballot kernel
  // on rows (N*S, C).  Otherwise the planar kernel on the NC(S)-contiguous tensor.
  at::Tensor src = x.movedim(1, -1);
  bool rows_layout = src.is_contiguous();
  if (!rows_layout) {
    src = x.contiguous();
    rows_layout = spatial == 1;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "irnet_pack_bits_cuda", [&] {
    if (rows_layout) {
      const int64_t rows = batch * spatial;
      pack_rows_kernel<scalar_t><<<grid_for(rows * words * 32, kPackThreads), kPackThreads, 0, stream>>>(
          src.const_data_ptr<scalar_t>(), out.mutable_data_ptr<int64_t>(), rows, channels, words);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      pack_planar_kernel<scalar_t><<<grid_for(batch * words * spatial, kPackThreads), kPackThreads, 0, stream>>>(
          src.const_data_ptr<scalar_t>(), out.mutable_data_ptr<int64_t>(), batch, channels, spatial, words);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace irnet_cuda

TORCH_LIBRARY_IMPL(irnet, CUDA, m) { m.impl("pack_bits", &irnet_cuda::pack_bits_cuda); }
