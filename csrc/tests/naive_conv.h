// The plain binary convolution the C++ tests compare every kernel with, one bit at a time:
//   dot[n][o][ho][wo] = sum over in-frame taps (r, q) and channels c < `channels` of
//                       (+-1)(+-1), bit 1 = -1; taps in the zero padding contribute 0.
// x holds NHWC words, w holds (O, kh, kw, words); `Shape` is any struct with the conv's
// N, O, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw and words. Output in NCHW order.
#pragma once

#include <cstdint>
#include <vector>

template <class Shape>
std::vector<int64_t> naive_binary_conv(const std::vector<uint64_t>& x, const std::vector<uint64_t>& w,
                                       const Shape& s, int64_t channels) {
  auto bit = [](const uint64_t* row, int64_t c) { return static_cast<int>((row[c / 64] >> (c % 64)) & 1u); };
  std::vector<int64_t> dot(static_cast<size_t>(s.N * s.O * s.Ho * s.Wo), 0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t ho = 0; ho < s.Ho; ++ho)
        for (int64_t wo = 0; wo < s.Wo; ++wo) {
          int64_t acc = 0;
          for (int64_t r = 0; r < s.kh; ++r)
            for (int64_t q = 0; q < s.kw; ++q) {
              const int64_t hi = ho * s.sh - s.ph + r * s.dh, wi = wo * s.sw - s.pw + q * s.dw;
              if (hi < 0 || hi >= s.H || wi < 0 || wi >= s.W) continue;
              const uint64_t* xr = x.data() + ((n * s.H + hi) * s.W + wi) * s.words;
              const uint64_t* wr = w.data() + ((o * s.kh + r) * s.kw + q) * s.words;
              for (int64_t c = 0; c < channels; ++c) acc += bit(xr, c) == bit(wr, c) ? 1 : -1;
            }
          dot[static_cast<size_t>(((n * s.O + o) * s.Ho + ho) * s.Wo + wo)] = acc;
        }
  return dot;
}
