// irnet::xnor_conv2d and irnet::xnor_linear on CUDA.  NEVER RUN ON A GPU: compiled
// for sm_80/sm_90 and statically checked only (see tests/test_cuda_ops.py).
//
// Maths.  x_bits (N, H, W, Wd) and w_bits (O, kh, kw, Wd) hold sign bits (1 = -1) of
// C = in_channels channels, Wd = ceil(C/64).  For an output pixel (n, ho, wo) the tap
// (r, s) reads input row hi = ho*sh - ph + r*dh, column wi = wo*sw - pw + s*dw; taps
// outside [0,H) x [0,W) sit in the zero padding and contribute 0.  Over the C real
// channels of an in-frame tap, the +-1 dot product is C - 2*popcount(x ^ w), counting
// only the valid bits (the tail word is masked, so garbage past C never counts).  So
//     dot[n, o, ho, wo] = ninf * C - 2 * sum_{in-frame taps, words} popc((x ^ w) & mask)
//     y = float(dot) * scale[o]          (float32 multiply, as the reference does)
// with ninf the number of in-frame taps of that pixel.  |dot| <= kh*kw*C < 2^31 is
// checked on the host, so int32 accumulation is exact; float(dot) rounds to nearest
// even like the reference's float64 -> float32 cast (exact below 2^24).
//
// Kernel (implicit GEMM on CUDA cores): M = N*Ho*Wo output pixels, Nc = O output
// channels, K = kh*kw*Wd words.  A block of kThreads threads owns kThreads pixels (one
// per thread) x kQ output channels.  K is walked in chunks of kKC words; each chunk of
// the kQ channels' weight words is staged in shared memory as wtile[k][q] (q fastest), so
// every thread of a warp reads the same 16 bytes (broadcast, no bank conflict), and each
// input word loaded from global memory serves kQ xor-popcounts.  The padding is handled
// per (pixel, tap) by skipping the tap, so no border correction is needed.
//
// xnor_linear is the same kernel with H = W = kh = kw = 1.
#include <torch/library.h>

#include "common.cuh"

namespace irnet_cuda {
namespace {

constexpr int kThreads = 128;  // pixels per block (one per thread)
constexpr int kQ = 16;         // output channels per block (accumulators per thread)
constexpr int kKC = 128;       // weight words per channel staged per chunk: 16 KiB shared

struct ConvGeometry {
  int64_t npix;  // N * Ho * Wo
  int64_t H, W, Ho, Wo;
  int64_t O;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int words;        // Wd
  int K;            // kh * kw * Wd  (< 2^25, checked)
  int channels;     // C
  uint64_t tail;    // valid bits of the last word of each tap
  int64_t ctiles;   // ceil(O / kQ)
};

__global__ void __launch_bounds__(kThreads)
xnor_conv2d_kernel(const uint64_t* __restrict__ x, const uint64_t* __restrict__ w, const float* __restrict__ scale,
                   float* __restrict__ y, const ConvGeometry g) {
  __shared__ __align__(16) uint64_t wtile[kKC * kQ];

  // blockIdx.x = pixel_tile * ctiles + channel_tile: the channel tiles of one pixel tile
  // are neighbours in launch order, so they share the input words in L1/L2.
  const int64_t ptile = blockIdx.x / g.ctiles;
  const int64_t o0 = (blockIdx.x - ptile * g.ctiles) * kQ;
  const int64_t pix = ptile * kThreads + threadIdx.x;
  const bool active = pix < g.npix;

  int64_t n = 0, ho = 0, wo = 0;
  if (active) {
    wo = pix % g.Wo;
    const int64_t t = pix / g.Wo;
    ho = t % g.Ho;
    n = t / g.Ho;
  }
  const int64_t h0 = ho * g.sh - g.ph;
  const int64_t w0 = wo * g.sw - g.pw;
  const uint64_t* xn = x + n * g.H * g.W * g.words;

  int acc[kQ];
#pragma unroll
  for (int q = 0; q < kQ; ++q) acc[q] = 0;

  for (int k0 = 0; k0 < g.K; k0 += kKC) {
    const int kc = g.K - k0 < kKC ? g.K - k0 : kKC;
    __syncthreads();  // the previous chunk is no longer read
    // Stage wtile[kl][q] = w[o0 + q, k0 + kl] (0 for channels past O: computed, never stored).
    for (int i = threadIdx.x; i < kc * kQ; i += kThreads) {
      const int q = i % kQ;
      const int kl = i / kQ;
      const int64_t o = o0 + q;
      wtile[i] = o < g.O ? __ldg(w + o * g.K + k0 + kl) : uint64_t(0);
    }
    __syncthreads();
    if (active) {
      // Walk the flat k range [k0, k0 + kc) tap by tap: word wd of tap `tap`.
      int tap = k0 / g.words;
      int wd = k0 - tap * g.words;
      int k = k0;
      while (k < k0 + kc) {
        const int wend = g.words < wd + (k0 + kc - k) ? g.words : wd + (k0 + kc - k);
        const int r = tap / g.kw;
        const int s = tap - r * g.kw;
        const int64_t hi = h0 + static_cast<int64_t>(r) * g.dh;
        const int64_t wi = w0 + static_cast<int64_t>(s) * g.dw;
        if (hi >= 0 && hi < g.H && wi >= 0 && wi < g.W) {
          const uint64_t* xp = xn + (hi * g.W + wi) * g.words;
          const uint64_t* srow = wtile + (k - k0) * kQ;  // staged row of word wd of this tap
          for (int j = wd; j < wend; ++j) {
            const uint64_t xv = __ldg(xp + j);
            const uint64_t m = j == g.words - 1 ? g.tail : ~uint64_t(0);
            const ulonglong2* row = reinterpret_cast<const ulonglong2*>(srow + (j - wd) * kQ);
#pragma unroll
            for (int q2 = 0; q2 < kQ / 2; ++q2) {
              const ulonglong2 b = row[q2];
              acc[2 * q2] += irnet::core::popcount64((xv ^ b.x) & m);
              acc[2 * q2 + 1] += irnet::core::popcount64((xv ^ b.y) & m);
            }
          }
        }
        k += wend - wd;
        ++tap;
        wd = 0;
      }
    }
  }
  if (!active) return;

  // ninf = (number of in-frame kernel rows) * (number of in-frame kernel columns).
  int rows_in = 0, cols_in = 0;
  for (int r = 0; r < g.kh; ++r) {
    const int64_t hi = h0 + static_cast<int64_t>(r) * g.dh;
    rows_in += (hi >= 0 && hi < g.H);
  }
  for (int s = 0; s < g.kw; ++s) {
    const int64_t wi = w0 + static_cast<int64_t>(s) * g.dw;
    cols_in += (wi >= 0 && wi < g.W);
  }
  const int base = rows_in * cols_in * g.channels;
  const int64_t hw = g.Ho * g.Wo;
  float* yp = y + (n * g.O + o0) * hw + ho * g.Wo + wo;
#pragma unroll
  for (int q = 0; q < kQ; ++q) {
    if (o0 + q < g.O) {
      // |2 * acc| may pass 2^31 when kh*kw*C > 2^30: form the difference in int64.
      float v = __ll2float_rn(static_cast<long long>(base) - 2LL * acc[q]);
      if (scale != nullptr) v = __fmul_rn(v, scale[o0 + q]);
      yp[q * hw] = v;
    }
  }
}

// Shared by conv and linear: checks of the scale argument; returns it as float32.
c10::optional<at::Tensor> scale_f32(const char* op, const std::optional<at::Tensor>& scale, int64_t O,
                                    const at::Tensor& ref) {
  if (!scale.has_value() || !scale->defined()) return c10::nullopt;
  const at::Tensor& s = *scale;
  check_same_device(op, "scale", s, "x_bits", ref);
  check_floating(op, "scale", s);
  TORCH_CHECK(s.dim() == 1 && s.size(0) == O, "irnet::", op, ": expected scale of shape (", O,
              ",) (one entry per output channel), got shape ", s.sizes());
  return s.to(at::kFloat).contiguous();
}

void launch_xnor(const at::Tensor& xb, const at::Tensor& wb, const c10::optional<at::Tensor>& scale, at::Tensor& y,
                 ConvGeometry g) {
  g.ctiles = ceil_div(g.O, kQ);
  const int64_t blocks = ceil_div(g.npix, kThreads) * g.ctiles;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "irnet::xnor: output too large for one launch (",
              blocks, " blocks)");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  xnor_conv2d_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      reinterpret_cast<const uint64_t*>(xb.const_data_ptr<int64_t>()),
      reinterpret_cast<const uint64_t*>(wb.const_data_ptr<int64_t>()),
      scale.has_value() ? scale->const_data_ptr<float>() : nullptr, y.mutable_data_ptr<float>(), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Int32 bound of the accumulators: kh * kw * Wd * 64 < 2^31.
void check_k_range(const char* op, int64_t taps, int64_t words) {
  TORCH_CHECK(taps * words * kWordBits <= std::numeric_limits<int32_t>::max(), "irnet::", op,
              ": expected kh*kw*64*ceil(C/64) < 2^31 (int32 accumulation), got ", taps, " taps of ", words, " words");
}

// Both packed operands: int64 CUDA tensors of rank `dim` on one device.
void check_packed_pair(const char* op, const at::Tensor& x_bits, const char* x_desc, const at::Tensor& w_bits,
                       const char* w_desc, int64_t dim) {
  check_cuda(op, "x_bits", x_bits);
  check_same_device(op, "w_bits", w_bits, "x_bits", x_bits);
  check_dtype(op, "x_bits", x_bits, at::kLong);
  check_dtype(op, "w_bits", w_bits, at::kLong);
  check_dim(op, x_desc, x_bits, dim);
  check_dim(op, w_desc, w_bits, dim);
}

}  // namespace

at::Tensor xnor_conv2d_cuda(const at::Tensor& x_bits, const at::Tensor& w_bits, const std::optional<at::Tensor>& scale,
                            int64_t in_channels, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, bool channels_last) {
  // float activations (N, C, H, W) in place of packed bits: packed here first
  if (x_bits.is_floating_point()) {
    TORCH_CHECK(x_bits.dim() == 4 && x_bits.size(1) == in_channels, "irnet::xnor_conv2d: expected float x_bits as the ",
                "activations (N, C, H, W) with in_channels = ", in_channels, " channels, got shape ", x_bits.sizes());
    return xnor_conv2d_cuda(pack_bits_cuda(x_bits), w_bits, scale, in_channels, stride, padding, dilation,
                            channels_last);
  }
  const char* op = "xnor_conv2d";
  check_packed_pair(op, x_bits, "x_bits (N, H, W, words)", w_bits, "w_bits (O, kh, kw, words)", 4);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "irnet::xnor_conv2d: expected stride, padding and dilation of 2 entries each, got ", stride, ", ",
              padding, ", ", dilation);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              "irnet::xnor_conv2d: expected stride >= 1, dilation >= 1, padding >= 0, got stride ", stride,
              ", padding ", padding, ", dilation ", dilation);
  // one rule with the CPU kernel: a dot over no channels is not a convolution
  TORCH_CHECK(in_channels >= 1, "irnet::xnor_conv2d: expected in_channels >= 1, got ", in_channels);
  const int64_t words = words_for(in_channels);
  TORCH_CHECK(x_bits.size(3) == words && w_bits.size(3) == words, "irnet::xnor_conv2d: expected ", words,
              " words per position for in_channels = ", in_channels, ", got x_bits ", x_bits.sizes(), " and w_bits ",
              w_bits.sizes());
  const int64_t N = x_bits.size(0), H = x_bits.size(1), W = x_bits.size(2);
  const int64_t O = w_bits.size(0), kh = w_bits.size(1), kw = w_bits.size(2);
  TORCH_CHECK(kh >= 1 && kw >= 1, "irnet::xnor_conv2d: expected a kernel of at least 1x1, got w_bits ",
              w_bits.sizes());
  // The kernel must fit the padded input (checked before the division: C++ division
  // truncates toward zero, so a negative span would otherwise give a size of 1).
  TORCH_CHECK(H + 2 * padding[0] - dilation[0] * (kh - 1) - 1 >= 0 &&
                  W + 2 * padding[1] - dilation[1] * (kw - 1) - 1 >= 0,
              "irnet::xnor_conv2d: kernel ", kh, "x", kw, " (dilation ", dilation, ") does not fit input ", H, "x", W,
              " padded by ", padding);
  const int64_t Ho = irnet::core::conv_out_size(H, kh, stride[0], padding[0], dilation[0]);
  const int64_t Wo = irnet::core::conv_out_size(W, kw, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "irnet::xnor_conv2d: kernel ", kh, "x", kw, " (dilation ", dilation,
              ") does not fit input ", H, "x", W, " padded by ", padding);
  check_k_range(op, kh * kw, words);
  TORCH_CHECK(stride[0] <= INT32_MAX && stride[1] <= INT32_MAX && padding[0] <= INT32_MAX &&
                  padding[1] <= INT32_MAX && dilation[0] <= INT32_MAX && dilation[1] <= INT32_MAX,
              "irnet::xnor_conv2d: stride, padding and dilation must fit in int32");
  const c10::cuda::CUDAGuard guard(x_bits.device());
  const auto scale32 = scale_f32(op, scale, O, x_bits);

  at::Tensor y = at::empty({N, O, Ho, Wo}, x_bits.options().dtype(at::kFloat));
  if (y.numel() == 0) return channels_last ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
  const at::Tensor xb = x_bits.contiguous();
  const at::Tensor wb = w_bits.contiguous();
  ConvGeometry g{};
  g.npix = N * Ho * Wo;
  g.H = H, g.W = W, g.Ho = Ho, g.Wo = Wo, g.O = O;
  g.kh = static_cast<int>(kh), g.kw = static_cast<int>(kw);
  g.sh = static_cast<int>(stride[0]), g.sw = static_cast<int>(stride[1]);
  g.ph = static_cast<int>(padding[0]), g.pw = static_cast<int>(padding[1]);
  g.dh = static_cast<int>(dilation[0]), g.dw = static_cast<int>(dilation[1]);
  g.words = static_cast<int>(words);
  g.K = static_cast<int>(kh * kw * words);
  g.channels = static_cast<int>(in_channels);
  g.tail = irnet::core::tail_mask(in_channels);
  launch_xnor(xb, wb, scale32, y, g);
  // the kernel writes NCHW; channels_last is one more pass (a native NHWC epilogue
  // would save it)
  return channels_last ? y.contiguous(at::MemoryFormat::ChannelsLast) : y;
}

at::Tensor xnor_linear_cuda(const at::Tensor& x_bits, const at::Tensor& w_bits, const std::optional<at::Tensor>& scale,
                            int64_t in_features) {
  const char* op = "xnor_linear";
  check_packed_pair(op, x_bits, "x_bits (N, words)", w_bits, "w_bits (O, words)", 2);
  TORCH_CHECK(in_features >= 1, "irnet::xnor_linear: expected in_features >= 1, got ", in_features);
  const int64_t words = words_for(in_features);
  TORCH_CHECK(x_bits.size(1) == words && w_bits.size(1) == words, "irnet::xnor_linear: expected ", words,
              " words per row for in_features = ", in_features, ", got x_bits ", x_bits.sizes(), " and w_bits ",
              w_bits.sizes());
  check_k_range(op, 1, words);
  const int64_t N = x_bits.size(0), O = w_bits.size(0);
  const c10::cuda::CUDAGuard guard(x_bits.device());
  const auto scale32 = scale_f32(op, scale, O, x_bits);

  at::Tensor y = at::empty({N, O}, x_bits.options().dtype(at::kFloat));
  if (y.numel() == 0) return y;
  const at::Tensor xb = x_bits.contiguous();
  const at::Tensor wb = w_bits.contiguous();
  // (N, words) = (N, 1, 1, words); (O, words) = (O, 1, 1, words); y (N, O) = (N, O, 1, 1).
  ConvGeometry g{};
  g.npix = N;
  g.H = 1, g.W = 1, g.Ho = 1, g.Wo = 1, g.O = O;
  g.kh = 1, g.kw = 1, g.sh = 1, g.sw = 1, g.ph = 0, g.pw = 0, g.dh = 1, g.dw = 1;
  g.words = static_cast<int>(words);
  g.K = static_cast<int>(words);
  g.channels = static_cast<int>(in_features);
  g.tail = irnet::core::tail_mask(in_features);
  launch_xnor(xb, wb, scale32, y, g);
  return y;
}

}  // namespace irnet_cuda

TORCH_LIBRARY_IMPL(irnet, CUDA, m) {
  m.impl("xnor_conv2d", &irnet_cuda::xnor_conv2d_cuda);
  m.impl("xnor_linear", &irnet_cuda::xnor_linear_cuda);
}
