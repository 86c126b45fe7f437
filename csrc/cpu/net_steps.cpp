// irnet CPU: max pooling with its epilogue, the option-A shortcut and an in-place clamp
// for the whole-network plan (see net_steps.h for what each computes).
//
// The hot loops are compiled for AVX-512, AVX2 and the baseline (GCC target_clones: the
// loader picks the best the CPU runs) and written so that the compiler vectorizes them:
// contiguous runs of a row (NCHW) or of the channels (channels_last).
#include "cpu/net_steps.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace irnet {
namespace cpu {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define IRNET_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define IRNET_CLONES
#endif

// PyTorch's max: a NaN wins (and stays), otherwise the larger value.
inline float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }

// m[i] = max(m[i], row[i]) over n values (one kernel row of a window, NCHW)
IRNET_CLONES void max_rows(float* __restrict m, const float* __restrict row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) m[i] = max_nan(m[i], row[i]);
}

// out[wo] = max_j m[wo * sw + j], j < kw, for wo in [0, n): the horizontal part of a
// window whose columns are all in the (padded) row m
IRNET_CLONES void max_cols(float* __restrict out, const float* __restrict m, int64_t n, int64_t sw, int64_t kw) {
  for (int64_t wo = 0; wo < n; ++wo) {
    float v = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < kw; ++j) v = max_nan(v, m[wo * sw + j]);
    out[wo] = v;
  }
}

// v = clamp(v * a + b) or clamp(v) on n values of one channel (NCHW)
IRNET_CLONES void epilogue_run(float* __restrict y, int64_t n, const float* a, const float* b, bool clamp, float lo,
                               float hi) {
  if (a) {
    const float av = *a, bv = *b;
    for (int64_t i = 0; i < n; ++i) y[i] = y[i] * av + bv;
  }
  if (clamp) {
    for (int64_t i = 0; i < n; ++i) {
      float v = y[i] < lo ? lo : y[i];
      y[i] = v > hi ? hi : v;
    }
  }
}

// y[c] = clamp(y[c] * a[c] + b[c]) or clamp(y[c]) on the C channels of one pixel (channels_last)
IRNET_CLONES void epilogue_channels(float* __restrict y, int64_t C, const float* __restrict a,
                                    const float* __restrict b, bool clamp, float lo, float hi) {
  if (a)
    for (int64_t c = 0; c < C; ++c) y[c] = y[c] * a[c] + b[c];
  if (clamp) {
    for (int64_t c = 0; c < C; ++c) {
      float v = y[c] < lo ? lo : y[c];
      y[c] = v > hi ? hi : v;
    }
  }
}

IRNET_CLONES void clamp_run(float* __restrict y, int64_t n, float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) {
    float v = y[i] < lo ? lo : y[i];
    y[i] = v > hi ? hi : v;
  }
}

// NCHW: one (n, c) plane at a time.  Each output row: the vertical max of its window's
// in-frame input rows into a -inf padded row buffer m (pw columns of -inf on either
// side), then the horizontal max over kw columns of m with stride sw.
void max_pool_nchw(const float* x, float* out, int64_t planes, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, const PoolEpilogue& epi) {
  const int64_t Wm = std::max<int64_t>(W + 2 * pw, (Wo - 1) * sw + kw);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, H * W));
  at::parallel_for(0, planes, grain, [&](int64_t b, int64_t e) {
    std::vector<float> m(static_cast<size_t>(Wm));
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t p = b; p < e; ++p) {
      const float* xp = x + p * H * W;
      float* op = out + p * Ho * Wo;
      for (int64_t ho = 0; ho < Ho; ++ho) {
        std::fill(m.begin(), m.end(), ninf);
        const int64_t h0 = ho * sh - ph;
        for (int64_t i = std::max<int64_t>(0, -h0); i < kh && h0 + i < H; ++i)
          max_rows(m.data() + pw, xp + (h0 + i) * W, W);
        max_cols(op + ho * Wo, m.data(), Wo, sw, kw);
      }
      const int64_t c = p % C;
      epilogue_run(op, Ho * Wo, epi.alpha ? epi.alpha + c : nullptr, epi.beta ? epi.beta + c : nullptr, epi.clamp,
                   epi.lo, epi.hi);
    }
  });
}

// channels_last: one output pixel at a time, the window's in-frame pixels max-ed over
// the contiguous channels.
void max_pool_nhwc(const float* x, float* out, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, const PoolEpilogue& epi) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, Wo * C * kh * kw));
  at::parallel_for(0, N * Ho, grain, [&](int64_t b, int64_t e) {
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / Ho, ho = r % Ho;
      const int64_t h0 = ho * sh - ph;
      for (int64_t wo = 0; wo < Wo; ++wo) {
        float* o = out + ((n * Ho + ho) * Wo + wo) * C;
        std::fill(o, o + C, ninf);
        const int64_t w0 = wo * sw - pw;
        for (int64_t i = std::max<int64_t>(0, -h0); i < kh && h0 + i < H; ++i)
          for (int64_t j = std::max<int64_t>(0, -w0); j < kw && w0 + j < W; ++j)
            max_rows(o, x + ((n * H + h0 + i) * W + w0 + j) * C, C);
        epilogue_channels(o, C, epi.alpha, epi.beta, epi.clamp, epi.lo, epi.hi);
      }
    }
  });
}

bool channels_last_layout(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_layouts(const char* what, const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat && x.dim() == 4 && out.dim() == 4,
              "irnet ", what, ": expected 4-d float32 tensors, got ", x.scalar_type(), " ", x.sizes(), " and ",
              out.scalar_type(), " ", out.sizes());
  const auto fmt = channels_last_layout(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  TORCH_CHECK(x.is_contiguous(fmt) && out.is_contiguous(fmt), "irnet ", what,
              ": expected input and output both NCHW-contiguous or both channels_last");
}

}  // namespace

void max_pool2d_into(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                     const PoolEpilogue& epi, const at::Tensor& out) {
  check_layouts("max_pool2d", x, out);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  const int64_t Ho = (H + 2 * ph - kh) / sh + 1, Wo = (W + 2 * pw - kw) / sw + 1;
  TORCH_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw,
              "irnet max_pool2d: bad window ", kernel, " stride ", stride, " padding ", padding);
  TORCH_CHECK(out.sizes() == at::IntArrayRef({N, C, Ho, Wo}), "irnet max_pool2d: expected an output of shape (", N,
              ", ", C, ", ", Ho, ", ", Wo, "), got ", out.sizes());
  if (out.numel() == 0) return;
  const float* xp = x.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (channels_last_layout(x))
    max_pool_nhwc(xp, op, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, epi);
  else
    max_pool_nchw(xp, op, N * C, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, epi);
}

void option_a_shortcut_into(const at::Tensor& x, int64_t stride, int64_t pad_lo, int64_t pad_hi, const at::Tensor& out) {
  check_layouts("option-A shortcut", x, out);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = (H + stride - 1) / stride, Wo = (W + stride - 1) / stride, Co = C + pad_lo + pad_hi;
  TORCH_CHECK(out.sizes() == at::IntArrayRef({N, Co, Ho, Wo}), "irnet option-A shortcut: expected an output of shape (",
              N, ", ", Co, ", ", Ho, ", ", Wo, "), got ", out.sizes());
  if (out.numel() == 0) return;
  const float* xp = x.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (channels_last_layout(x)) {
    at::parallel_for(0, N * Ho, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t n = r / Ho, ho = r % Ho;
        for (int64_t wo = 0; wo < Wo; ++wo) {
          float* o = op + ((n * Ho + ho) * Wo + wo) * Co;
          const float* s = xp + ((n * H + ho * stride) * W + wo * stride) * C;
          std::fill(o, o + pad_lo, 0.0f);
          std::copy(s, s + C, o + pad_lo);
          std::fill(o + pad_lo + C, o + Co, 0.0f);
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * Co, 16, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const int64_t n = p / Co, c = p % Co - pad_lo;
      float* o = op + p * Ho * Wo;
      if (c < 0 || c >= C) {
        std::fill(o, o + Ho * Wo, 0.0f);
        continue;
      }
      const float* s = xp + (n * C + c) * H * W;
      for (int64_t ho = 0; ho < Ho; ++ho)
        for (int64_t wo = 0; wo < Wo; ++wo) o[ho * Wo + wo] = s[ho * stride * W + wo * stride];
    }
  });
}

void clamp_inplace(const at::Tensor& x, float lo, float hi) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && (x.is_contiguous() || channels_last_layout(x)),
              "irnet clamp: expected a dense float32 tensor");
  float* p = x.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t b, int64_t e) { clamp_run(p + b, e - b, lo, hi); });
}

}  // namespace cpu
}  // namespace irnet
