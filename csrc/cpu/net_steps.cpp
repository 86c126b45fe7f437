// irnet CPU: max pooling with its epilogue, the option-A shortcut and an in-place clamp
// for the whole-network plan (see net_steps.h for what each computes).
//
// The hot loops are compiled for AVX-512, AVX2 and the baseline (GCC target_clones: the
// loader picks the best the CPU runs) and written so that the compiler vectorizes them:
// contiguous runs of a row (NCHW) or of the channels (channels_last).
#include "cpu/net_steps.h"

#include "core/conv_epilogue.h"

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

// v = clamp(v * a + b) or clamp(v) on n values of one channel (NCHW)
inline void epilogue_run(float* __restrict y, int64_t n, const float* a, const float* b, bool clamp, float lo,
                         float hi) {
  if (a) {
    const float av = *a, bv = *b;
    for (int64_t i = 0; i < n; ++i) y[i] = y[i] * av + bv;
  }
  if (clamp)
    for (int64_t i = 0; i < n; ++i) y[i] = core::clamp_keep_nan(y[i], lo, hi);
}

struct PoolGeometry {
  int64_t C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
};

// NCHW, one (n, c) plane.  Output row ho: the vertical max of its window's in-frame input
// rows into the row m (pw columns of -inf on either side: the padding), then the
// horizontal max: with sw > 1, m is first split into its sw phases (phase r holds
// m[i*sw + r]), so that tap j of output column wo is phase j % sw at wo + j / sw and
// every loop below runs over contiguous memory (the compiler vectorizes them).
IRNET_CLONES void max_pool_plane(const float* __restrict x, float* __restrict out, const PoolGeometry& g,
                                 const float* alpha, const float* beta, const PoolEpilogue& epi, float* __restrict m,
                                 float* __restrict phases) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t Wm = g.W + 2 * g.pw;
  const int64_t plen = (Wm + g.sw - 1) / g.sw;  // entries per phase
  for (int64_t i = 0; i < g.pw; ++i) m[i] = m[g.pw + g.W + i] = ninf;
  for (int64_t i = Wm; i < plen * g.sw; ++i) m[i] = ninf;
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    const int64_t h0 = ho * g.sh - g.ph;
    const int64_t i0 = h0 < 0 ? -h0 : 0, i1 = h0 + g.kh > g.H ? g.H - h0 : g.kh;
    float* __restrict mr = m + g.pw;
    const float* first = x + (h0 + i0) * g.W;
    for (int64_t w = 0; w < g.W; ++w) mr[w] = first[w];
    for (int64_t i = i0 + 1; i < i1; ++i) {
      const float* row = x + (h0 + i) * g.W;
      for (int64_t w = 0; w < g.W; ++w) mr[w] = max_nan(mr[w], row[w]);
    }
    const float* src = m;
    if (g.sw > 1) {
      for (int64_t r = 0; r < g.sw; ++r)
        for (int64_t i = 0; i < plen; ++i) phases[r * plen + i] = m[i * g.sw + r];
      src = phases;
    }
    float* __restrict o = out + ho * g.Wo;
    for (int64_t wo = 0; wo < g.Wo; ++wo) o[wo] = ninf;
    for (int64_t j = 0; j < g.kw; ++j) {
      const float* p = g.sw > 1 ? src + (j % g.sw) * plen + j / g.sw : src + j;
      for (int64_t wo = 0; wo < g.Wo; ++wo) o[wo] = max_nan(o[wo], p[wo]);
    }
  }
  epilogue_run(out, g.Ho * g.Wo, alpha, beta, epi.clamp, epi.lo, epi.hi);
}

// channels_last, one output row (n, ho): each pixel's window max over the contiguous
// channels, then the epilogue per channel.
IRNET_CLONES void max_pool_row_nhwc(const float* __restrict x, float* __restrict out, const PoolGeometry& g,
                                    int64_t ho, const PoolEpilogue& epi) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t C = g.C;
  const int64_t h0 = ho * g.sh - g.ph;
  const int64_t i0 = h0 < 0 ? -h0 : 0, i1 = h0 + g.kh > g.H ? g.H - h0 : g.kh;
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    float* __restrict o = out + wo * C;
    for (int64_t c = 0; c < C; ++c) o[c] = ninf;
    const int64_t w0 = wo * g.sw - g.pw;
    const int64_t j0 = w0 < 0 ? -w0 : 0, j1 = w0 + g.kw > g.W ? g.W - w0 : g.kw;
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = j0; j < j1; ++j) {
        const float* __restrict v = x + ((h0 + i) * g.W + w0 + j) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = max_nan(o[c], v[c]);
      }
    if (epi.alpha)
      for (int64_t c = 0; c < C; ++c) o[c] = o[c] * epi.alpha[c] + epi.beta[c];
    if (epi.clamp)
      for (int64_t c = 0; c < C; ++c) o[c] = core::clamp_keep_nan(o[c], epi.lo, epi.hi);
  }
}

IRNET_CLONES void clamp_run(float* __restrict y, int64_t n, float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) y[i] = core::clamp_keep_nan(y[i], lo, hi);
}

void max_pool_nchw(const float* x, float* out, int64_t planes, const PoolGeometry& g, const PoolEpilogue& epi) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, g.H * g.W));
  const int64_t plen = (g.W + 2 * g.pw + g.sw - 1) / g.sw;
  at::parallel_for(0, planes, grain, [&](int64_t b, int64_t e) {
    std::vector<float> m(static_cast<size_t>(plen * g.sw)), phases(static_cast<size_t>(plen * g.sw));
    for (int64_t p = b; p < e; ++p) {
      const int64_t c = p % g.C;
      max_pool_plane(x + p * g.H * g.W, out + p * g.Ho * g.Wo, g, epi.alpha ? epi.alpha + c : nullptr,
                     epi.beta ? epi.beta + c : nullptr, epi, m.data(), phases.data());
    }
  });
}

void max_pool_nhwc(const float* x, float* out, int64_t N, const PoolGeometry& g, const PoolEpilogue& epi) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, g.Wo * g.C * g.kh * g.kw));
  at::parallel_for(0, N * g.Ho, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / g.Ho, ho = r % g.Ho;
      max_pool_row_nhwc(x + n * g.H * g.W * g.C, out + r * g.Wo * g.C, g, ho, epi);
    }
  });
}

void check_layouts(const char* what, const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat && x.dim() == 4 && out.dim() == 4,
              "irnet ", what, ": expected 4-d float32 tensors, got ", x.scalar_type(), " ", x.sizes(), " and ",
              out.scalar_type(), " ", out.sizes());
  const auto fmt = layout_of(x);
  TORCH_CHECK(x.is_contiguous(fmt) && out.is_contiguous(fmt), "irnet ", what,
              ": expected input and output both NCHW-contiguous or both channels_last");
}

}  // namespace

bool channels_last_layout(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

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
  const PoolGeometry g{C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw};
  if (channels_last_layout(x))
    max_pool_nhwc(xp, op, N, g, epi);
  else
    max_pool_nchw(xp, op, N * C, g, epi);
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
