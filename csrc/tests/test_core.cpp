// Unit test of the torch-free core (csrc/core) and of the CPU XNOR kernels of every
// SIMD level this CPU runs (csrc/cpu/xnor_simd.*), each against a naive loop.
// Built and run by CMakeLists.txt (ctest); tests/test_ctest.py drives it from pytest.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/bitpack.h"
#include "core/conv_geometry.h"
#include "cpu/xnor_lut.h"
#include "cpu/xnor_planes.h"
#include "cpu/xnor_simd.h"

#include "tests/check.h"
#include "tests/naive_conv.h"

using namespace irnet;


static std::mt19937_64 rng(12345);

static float rand_value() {
  std::uniform_int_distribution<int> pick(0, 19);
  std::normal_distribution<float> g;
  switch (pick(rng)) {
    case 0: return -0.0f;
    case 1: return 0.0f;
    case 2: return std::nanf("");
    case 3: return -std::nanf("");
    case 4: return -INFINITY;
    default: return g(rng);
  }
}

// IEEE half -> float, written out (the truth for the half sign test).
static float half_to_float(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  float v;
  if (e == 0) v = std::ldexp(float(m), -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(float(m | 1024), e - 25);
  return s ? -v : v;
}
static float bf16_to_float(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static void test_popcount_and_dot() {
  for (int t = 0; t < 2000; ++t) {
    const uint64_t v = rng();
    int naive = 0;
    for (int b = 0; b < 64; ++b) naive += (v >> b) & 1;
    CHECK(core::popcount64(v) == naive, "v=%llx", (unsigned long long)v);
  }
  for (int64_t len : {1, 2, 63, 64, 65, 127, 128, 129, 200, 511, 1000}) {
    std::vector<float> a(len), b(len);
    for (auto& v : a) v = rand_value();
    for (auto& v : b) v = rand_value();
    const int64_t words = core::num_words(len);
    CHECK(words == (len + 63) / 64, "len=%lld", (long long)len);
    std::vector<uint64_t> pa(words, ~0ull), pb(words, ~0ull);
    core::pack_row_strided(a.data(), 1, len, pa.data());
    core::pack_row_strided(b.data(), 1, len, pb.data());
    int64_t naive = 0;
    for (int64_t i = 0; i < len; ++i) {
      const int sa = a[i] < 0 ? -1 : 1, sb = b[i] < 0 ? -1 : 1;  // NaN, -0.0 -> +1
      naive += sa * sb;
      CHECK(((pa[i / 64] >> (i % 64)) & 1) == (a[i] < 0 ? 1u : 0u), "pack bit %lld", (long long)i);
    }
    CHECK((pa[words - 1] & ~core::tail_mask(len)) == 0, "tail bits not zero for len %lld", (long long)len);
    CHECK(core::xnor_dot(pa.data(), pb.data(), words, len) == naive, "dot len=%lld", (long long)len);
    // strided packing: every third element
    std::vector<float> s(3 * len);
    for (int64_t i = 0; i < len; ++i) s[3 * i] = a[i];
    std::vector<uint64_t> ps(words);
    core::pack_row_strided(s.data(), 3, len, ps.data());
    CHECK(ps == pa, "strided pack len=%lld", (long long)len);
  }
  // the half / bfloat16 sign tests against a decoded value, over every bit pattern
  for (uint32_t h = 0; h < 65536; ++h) {
    CHECK(core::is_negative_f16_bits(uint16_t(h)) == (half_to_float(uint16_t(h)) < 0), "f16 %x", h);
    CHECK(core::is_negative_bf16_bits(uint16_t(h)) == (bf16_to_float(uint16_t(h)) < 0), "bf16 %x", h);
  }
}

static void test_transpose() {
  for (int t = 0; t < 20; ++t) {
    uint64_t a[64], b[64];
    for (auto& v : a) v = rng();
    std::memcpy(b, a, sizeof(a));
    core::transpose64(b);
    for (int i = 0; i < 64; ++i)
      for (int j = 0; j < 64; ++j) CHECK(((b[i] >> j) & 1) == ((a[j] >> i) & 1), "transpose %d %d", i, j);
  }
}

static void test_geometry() {
  for (int64_t in = 1; in <= 12; ++in)
    for (int64_t k = 1; k <= 7; ++k)
      for (int64_t s = 1; s <= 3; ++s)
        for (int64_t p = 0; p <= 4; ++p)
          for (int64_t d = 1; d <= 3; ++d) {
            const int64_t out = core::conv_out_size(in, k, s, p, d);
            int64_t brute_out = 0;  // positions whose window start..end fits the padded input
            while (brute_out * s + d * (k - 1) <= in + 2 * p - 1) ++brute_out;
            CHECK((out > 0 ? out : 0) == brute_out, "out in=%lld k=%lld s=%lld p=%lld d=%lld", (long long)in, (long long)k,
                  (long long)s, (long long)p, (long long)d);
            if (out < 1) continue;
            const core::TapRange inner = core::interior_range(out, k, s, p, d, in);
            for (int64_t q = 0; q < out; ++q) {
              int64_t t0 = -1, t1 = -1, count = 0;
              for (int64_t t = 0; t < k; ++t) {
                const int64_t i = q * s - p + t * d;
                if (i >= 0 && i < in) {
                  if (t0 < 0) t0 = t;
                  t1 = t + 1;
                  ++count;
                }
              }
              const core::TapRange r = core::tap_range(q, k, s, p, d, in);
              CHECK(r.t1 - r.t0 == count, "tap count");
              if (count) CHECK(r.t0 == t0 && r.t1 == t1, "tap range");
              CHECK((q >= inner.t0 && q < inner.t1) == (count == k), "interior q=%lld", (long long)q);
            }
          }
}

// Naive conv on packed operands: unpack to +-1 and sum in-frame taps.
static std::vector<float> naive_conv(const std::vector<uint64_t>& x, const std::vector<uint64_t>& w,
                                     const std::vector<float>* scale, const cpu::ConvProblem& P) {
  const std::vector<int64_t> dot = naive_binary_conv(x, w, P, P.C);
  std::vector<float> out(dot.size());
  for (size_t i = 0; i < dot.size(); ++i) {
    const int64_t o = static_cast<int64_t>(i) / (P.Ho * P.Wo) % P.O;
    out[i] = scale ? float(dot[i]) * (*scale)[o] : float(dot[i]);
  }
  return out;
}

static std::vector<uint64_t> random_bits(int64_t rows, int64_t channels) {
  const int64_t words = core::num_words(channels);
  std::vector<uint64_t> v(rows * words);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t w = 0; w < words; ++w) v[r * words + w] = rng() & (w == words - 1 ? core::tail_mask(channels) : ~0ull);
  return v;
}

// Convolution cases of both kernels (a linear layer is the 1x1 case with H = W = 1).
struct ConvCase {
  int64_t N, C, H, W, O, kh, kw, s, p, d;
};
const ConvCase kConvCases[] = {
    {1, 1, 5, 6, 3, 3, 3, 1, 1, 1},  {2, 63, 7, 5, 9, 3, 3, 2, 1, 1},  {1, 64, 6, 6, 16, 3, 3, 1, 1, 1},
    {2, 65, 8, 9, 7, 5, 5, 1, 2, 1}, {1, 127, 9, 7, 17, 7, 7, 2, 3, 1}, {1, 200, 9, 9, 5, 3, 3, 1, 2, 2},
    {3, 130, 4, 5, 11, 1, 1, 1, 0, 1}, {2, 70, 9, 8, 8, 1, 1, 2, 0, 1}, {1, 64, 5, 5, 3, 3, 3, 1, 3, 1},
    {5, 1000, 1, 1, 21, 1, 1, 1, 0, 1}, {1, 2000, 3, 3, 9, 3, 3, 1, 1, 1}, {2, 20, 6, 11, 5, 3, 1, 1, 0, 2},
    {2, 16, 20, 33, 5, 3, 3, 1, 1, 1}, {1, 40, 17, 35, 6, 3, 3, 2, 1, 1}, {1, 3, 18, 40, 2, 5, 5, 3, 2, 1},
};

static cpu::ConvProblem conv_problem(const ConvCase& c) {
  cpu::ConvProblem P;
  P.N = c.N, P.C = c.C, P.H = c.H, P.W = c.W, P.words = core::num_words(c.C);
  P.O = c.O, P.kh = c.kh, P.kw = c.kw, P.sh = P.sw = c.s, P.ph = P.pw = c.p, P.dh = P.dw = c.d;
  P.Ho = core::conv_out_size(c.H, c.kh, c.s, c.p, c.d);
  P.Wo = core::conv_out_size(c.W, c.kw, c.s, c.p, c.d);
  return P;
}

// The AVX2 table-lookup kernel (cpu/xnor_lut.h) on every case, run in uneven position
// blocks and channel groups, NCHW and channels_last, against the naive conv.
static void test_lut() {
  const cpu::LutKernels* k = cpu::lut_kernels();
  if (k == nullptr) {
    std::printf("LUT kernel: not available on this CPU\n");
    return;
  }
  std::printf("testing the LUT kernel\n");
  for (const ConvCase& c : kConvCases) {
    cpu::ConvProblem P = conv_problem(c);
    const cpu::LutGeometry G = cpu::lut_geometry(P, k->qv);
    const std::vector<uint64_t> x = random_bits(c.N * c.H * c.W, c.C);
    const std::vector<uint64_t> w = random_bits(c.O * c.kh * c.kw, c.C);
    const int64_t opad = (c.O + k->ot - 1) / k->ot * k->ot;
    std::vector<uint16_t> wofs(opad * G.K);
    cpu::lut_weight_offsets(w.data(), P, G, 0, opad, wofs.data());
    std::vector<int64_t> xoff(G.K);
    cpu::plane_offsets(P, G, xoff.data());
    std::vector<int32_t> kin(G.Qk);
    cpu::plane_kin(P, G, kin.data());
    P.x = x.data();
    std::vector<uint8_t> planes(G.total, 0x80);
    const int64_t units = P.N * P.sh * G.Hq;
    for (int64_t u0 = 0; u0 < units; u0 += 3) k->prep_planes(P, G, u0, u0 + 3 < units ? u0 + 3 : units, planes.data());
    std::vector<float> scale(c.O);
    for (int64_t o = 0; o < c.O; ++o) scale[o] = std::ldexp(1.0f, int(rng() % 7) - 3);
    cpu::LutProblem L;
    L.P = &P, L.G = G, L.planes = planes.data(), L.xoff = xoff.data(), L.wofs = wofs.data();
    L.kin = kin.data(), L.scale = scale.data();
    const std::vector<float> want = naive_conv(x, w, &scale, P);
    for (int cl = 0; cl < 2; ++cl) {
      std::vector<float> out(P.N * c.O * P.Ho * P.Wo, NAN);
      P.out = out.data();
      P.out_cl = cl == 1;
      const int64_t qb = 37, og = k->ot;  // blocks that do not line up with the vectors
      std::vector<unsigned char> scratch(k->scratch_bytes(og));
      for (int64_t n = 0; n < P.N; ++n)
        for (int64_t q0 = 0; q0 < G.Qn; q0 += qb)
          for (int64_t o0 = 0; o0 < c.O; o0 += og)
            k->conv_block(L, n, q0, q0 + qb < G.Qn ? q0 + qb : G.Qn, o0, o0 + og < c.O ? o0 + og : c.O, scratch.data());
      int bad = 0;
      for (int64_t n = 0; n < P.N; ++n)
        for (int64_t o = 0; o < c.O; ++o)
          for (int64_t m = 0; m < P.Ho * P.Wo; ++m) {
            const float got = cl ? out[(n * P.Ho * P.Wo + m) * c.O + o] : out[(n * c.O + o) * P.Ho * P.Wo + m];
            bad += std::memcmp(&got, &want[(n * c.O + o) * P.Ho * P.Wo + m], sizeof(float)) != 0;
          }
      CHECK(bad == 0, "lut conv N=%lld C=%lld %lldx%lld O=%lld k=%lldx%lld s=%lld p=%lld d=%lld cl=%d: %d wrong",
            (long long)c.N, (long long)c.C, (long long)c.H, (long long)c.W, (long long)c.O, (long long)c.kh,
            (long long)c.kw, (long long)c.s, (long long)c.p, (long long)c.d, cl, bad);
    }
  }
}

// The values of a (N, C, M) in NCHW order, laid out (N, M, C): channels_last order.
static std::vector<float> nchw_to_nhwc(const std::vector<float>& a, int64_t N, int64_t C, int64_t M) {
  std::vector<float> out(a.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t m = 0; m < M; ++m) out[(n * M + m) * C + ch] = a[(n * C + ch) * M + m];
  return out;
}

// The AVX-512 planes kernel (cpu/xnor_planes.h) against the naive conv: every conv case
// and cases aimed at it (each lane width and group count, dots past the 8- and 16-bit
// lanes' chunk limits, all-matching dots at those limits, images narrower than a vector,
// Wo = 1, grid and row-start vectors), from packed bits and from float32 NCHW input,
// NCHW and channels_last output, run in uneven vector blocks and channel groups; and the
// fused epilogue on a few.
static void test_planes() {
  const cpu::PlanesKernels* k = cpu::planes_kernels();
  if (k == nullptr) {
    std::printf("planes kernel: not available on this CPU\n");
    return;
  }
  std::printf("testing the planes kernel\n");
  // the lane width rule: the fewest bits per position and tap, the wider lanes on a tie
  const int64_t widths[][2] = {{1, 8},   {8, 8},   {9, 16},  {16, 16}, {17, 32},  {24, 32},  {32, 32},
                               {33, 16}, {48, 16}, {64, 64}, {65, 16}, {100, 16}, {248, 64}, {256, 64}};
  for (const auto& cw : widths) CHECK(cpu::planes_lane_bits(cw[0]) == cw[1], "lane bits of C=%lld", (long long)cw[0]);
  std::vector<ConvCase> cases(std::begin(kConvCases), std::end(kConvCases));
  const ConvCase extra[] = {
      {2, 7, 9, 8, 5, 3, 3, 1, 1, 1},    {1, 8, 7, 40, 9, 3, 3, 2, 1, 1},   {2, 9, 5, 5, 3, 3, 3, 1, 1, 1},
      {1, 15, 33, 31, 4, 3, 3, 1, 1, 1}, {2, 16, 32, 32, 11, 3, 3, 1, 1, 1}, {1, 16, 32, 32, 16, 3, 3, 2, 1, 1},
      {1, 17, 6, 7, 8, 3, 3, 1, 1, 1},   {2, 31, 16, 16, 9, 3, 3, 1, 1, 1},  {1, 32, 16, 16, 32, 3, 3, 2, 1, 1},
      {1, 33, 9, 9, 3, 3, 3, 1, 2, 2},   {1, 48, 10, 10, 8, 3, 3, 1, 1, 1},  {1, 63, 8, 8, 8, 3, 3, 1, 1, 1},
      {2, 64, 8, 8, 17, 3, 3, 1, 1, 1},  {1, 65, 7, 9, 5, 3, 3, 1, 1, 1},    {1, 248, 5, 6, 3, 3, 3, 1, 1, 1},
      {1, 8, 12, 12, 3, 7, 7, 1, 3, 1},  {1, 16, 2, 2052, 2, 2, 2050, 1, 0, 1},  {1, 16, 5, 1, 3, 3, 3, 1, 1, 1},
      {1, 5, 4, 2, 3, 3, 3, 1, 1, 1},    {3, 1, 1, 1, 2, 1, 1, 1, 0, 1},     {1, 16, 20, 9, 4, 3, 3, 1, 5, 1},
      {1, 248, 4, 4, 2, 3, 3, 1, 1, 1},  {2, 65, 6, 6, 3, 3, 3, 1, 1, 1},
  };
  cases.insert(cases.end(), std::begin(extra), std::end(extra));
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const ConvCase& c = cases[ci];
    cpu::ConvProblem P = conv_problem(c);
    if (P.Ho < 1 || P.Wo < 1) continue;
    const cpu::PlanesLayout Y = cpu::planes_layout(P);
    // float activations (with -0.0, NaN, inf) and their packed bits; the weights' bits
    std::vector<float> xf(c.N * c.C * c.H * c.W);
    for (auto& v : xf) v = rand_value();
    std::vector<uint64_t> x(c.N * c.H * c.W * P.words, 0);
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t m = 0; m < c.H * c.W; ++m)
        core::pack_row_strided(xf.data() + n * c.C * c.H * c.W + m, c.H * c.W, c.C, x.data() + (n * c.H * c.W + m) * P.words);
    std::vector<uint64_t> w = random_bits(c.O * c.kh * c.kw, c.C);
    // every sign equal (+1): the largest counts a lane takes, here past the 8-bit lanes' 31
    // steps (7x7 taps of 8 channels) and the 16-bit lanes' 4095 (2 x 2050 taps of 16)
    const bool all_match = (c.C == 8 && c.kh == 7) || c.kw == 2050 || (c.C == 248 && c.H == 4);
    if (all_match) {
      for (auto& v : xf) v = 1.0f;
      for (auto& v : x) v = 0;
      for (auto& v : w) v = 0;
    }
    const int64_t tiles = (c.O + Y.ob - 1) / Y.ob;
    std::vector<uint64_t> wl(tiles * Y.G.K * Y.ob);
    cpu::planes_weights(w.data(), P, Y, 0, tiles, wl.data());
    cpu::PlanesTables tables;
    cpu::planes_tables(P, Y, tables);
    const int64_t E = Y.lane_bits / 8;
    std::vector<float> scale(c.O), alpha(c.O), beta(c.O);
    for (int64_t o = 0; o < c.O; ++o) {
      scale[o] = std::ldexp(1.0f, int(rng() % 7) - 3);
      alpha[o] = rand_value();
      beta[o] = rand_value();
    }
    const std::vector<float> want = naive_conv(x, w, &scale, P);
    std::vector<float> residual(want.size());
    for (auto& v : residual) v = rand_value();
    // the same floats in channels_last order (N, H, W, C)
    const std::vector<float> xf_cl = nchw_to_nhwc(xf, c.N, c.C, c.H * c.W);
    // the packed input with stray bits past C (the kernel must read only the C channels)
    std::vector<uint64_t> x_junk(x);
    for (size_t i = P.words - 1; i < x_junk.size(); i += P.words) x_junk[i] |= ~core::tail_mask(c.C) & rng();
    // bit 0: channels_last output; bit 1: float input (NCHW, or channels_last with channels_last
    // output); modes 4-7 fused, with a residual below 6
    for (int mode = 0; mode < 8; ++mode) {
      const bool cl = mode & 1, from_float = mode & 2 && mode < 4, fused = mode >= 4;
      P.x = from_float ? nullptr : (mode == 0 ? x_junk.data() : x.data());
      P.xf = from_float ? (cl ? xf_cl.data() : xf.data()) : nullptr;  // (channels_last input with channels_last output)
      P.xf_cl = from_float && cl;
      std::vector<unsigned char> planes(Y.G.total * E, 0xA5);  // padding elements are written by prep
      const int64_t units = P.N * P.sh * Y.G.Hq;
      for (int64_t u0 = 0; u0 < units; u0 += 3) k->prep_planes(P, Y, u0, u0 + 3 < units ? u0 + 3 : units, planes.data());
      cpu::PlanesProblem Q;
      Q.P = &P, Q.Y = Y, Q.planes = planes.data(), Q.tables = cpu::planes_table_view(tables), Q.w = wl.data(), Q.scale = scale.data();
      std::vector<float> out(P.N * c.O * P.Ho * P.Wo, NAN);
      P.out = out.data();
      P.out_cl = cl;
      P.alpha = fused ? alpha.data() : nullptr, P.beta = fused ? beta.data() : nullptr;
      P.residual = fused && mode < 6 ? residual.data() : nullptr;  // (NCHW order: residual values per (n, o, m))
      std::vector<float> res_cl;
      if (P.residual && cl) {  // the same residual values, laid out like the channels_last output
        res_cl = nchw_to_nhwc(residual, P.N, c.O, P.Ho * P.Wo);
        P.residual = res_cl.data();
      }
      P.lo = -1.5f, P.hi = 2.0f;
      const int64_t vb = 3, og = 2 * Y.ob;  // blocks that do not line up with the tiles
      std::vector<unsigned char> scratch(k->scratch_bytes(Y, og));
      for (int64_t n = 0; n < P.N; ++n)
        for (int64_t v0 = 0; v0 < Y.vectors; v0 += vb)
          for (int64_t o0 = 0; o0 < c.O; o0 += og)
            k->conv_block(Q, n, v0, v0 + vb < Y.vectors ? v0 + vb : Y.vectors, o0, o0 + og < c.O ? o0 + og : c.O,
                          scratch.data());
      int bad = 0;
      for (int64_t n = 0; n < P.N; ++n)
        for (int64_t o = 0; o < c.O; ++o)
          for (int64_t m = 0; m < P.Ho * P.Wo; ++m) {
            const int64_t i = (n * c.O + o) * P.Ho * P.Wo + m;
            const float got = cl ? out[(n * P.Ho * P.Wo + m) * c.O + o] : out[i];
            float expect = want[i];
            if (fused) {  // clamp((y * a + b) + r, lo, hi), NaN kept
              float v = expect * alpha[o] + beta[o];
              if (P.residual) v = v + residual[i];
              v = v < P.lo ? P.lo : v;
              expect = v > P.hi ? P.hi : v;
            }
            bad += std::memcmp(&got, &expect, sizeof(float)) != 0 && !(std::isnan(got) && std::isnan(expect));
          }
      CHECK(bad == 0,
            "planes conv N=%lld C=%lld %lldx%lld O=%lld k=%lldx%lld s=%lld p=%lld d=%lld L=%d rows=%d mode=%d: %d wrong",
            (long long)c.N, (long long)c.C, (long long)c.H, (long long)c.W, (long long)c.O, (long long)c.kh,
            (long long)c.kw, (long long)c.s, (long long)c.p, (long long)c.d, Y.lane_bits, int(Y.rows), mode, bad);
    }
    P.alpha = P.beta = P.residual = nullptr;
  }
  uint64_t sink = 0;
  for (int L : {8, 16, 32, 64}) {  // the tile of a layer with L channels
    const cpu::PlanesLayout Y = cpu::planes_layout(conv_problem(ConvCase{1, L, 8, 8, 8, 3, 3, 1, 1, 1}));
    CHECK(Y.lane_bits == L && k->peak_probe(L, 40, 3, &sink) == 3 * 40 * int64_t(Y.ob) * Y.nv * 512,
          "planes peak probe count L=%d", L);
  }
}

static void test_level(const char* name) {
  const cpu::LevelKernels* k = cpu::level_kernels(name);
  CHECK(k != nullptr, "level %s", name);
  if (!k) return;
  // sign masks of every dtype against the scalar test
  for (int n = 1; n <= 64; ++n) {
    std::vector<float> f(n);
    std::vector<double> d(n);
    std::vector<uint16_t> h(n), bh(n);
    for (int i = 0; i < n; ++i) {
      f[i] = rand_value();
      d[i] = double(f[i]) * (i % 2 ? 1e300 : 1.0);
      h[i] = uint16_t(rng());
      bh[i] = uint16_t(rng());
    }
    CHECK(k->neg_mask_f32(f.data(), n) == core::pack_word_strided(f.data(), 1, n), "%s f32 n=%d", name, n);
    CHECK(k->neg_mask_f64(d.data(), n) == core::pack_word_strided(d.data(), 1, n), "%s f64 n=%d", name, n);
    CHECK(k->neg_mask_f16(h.data(), n) == core::pack_word_strided<core::F16Bits>(h.data(), 1, n), "%s f16 n=%d", name, n);
    CHECK(k->neg_mask_bf16(bh.data(), n) == core::pack_word_strided<core::BF16Bits>(bh.data(), 1, n), "%s bf16 n=%d", name, n);
  }
  // convolutions (a linear layer is the 1x1 case with H = W = 1)
  for (const ConvCase& c : kConvCases) {
    cpu::ConvProblem P = conv_problem(c);
    const std::vector<uint64_t> x = random_bits(c.N * c.H * c.W, c.C);
    const std::vector<uint64_t> w = random_bits(c.O * c.kh * c.kw, c.C);
    const int64_t L = c.kh * c.kw * P.words, npan = (c.O + k->nr - 1) / k->nr;
    std::vector<uint64_t> panels(npan * L * k->nr * k->split);
    std::vector<int32_t> wrect(npan * k->nr * (c.kh + 1) * (c.kw + 1));
    cpu::pack_weight_panels(w.data(), c.O, c.kh, c.kw, P.words, k->nr, k->split, 0, npan, panels.data(), wrect.data());
    std::vector<float> scale(npan * k->nr, 0.0f), ones(npan * k->nr, 1.0f);
    for (int64_t o = 0; o < c.O; ++o) scale[o] = std::ldexp(1.0f, int(rng() % 7) - 3);
    P.x = x.data(), P.wpanel = panels.data(), P.wrect = wrect.data(), P.ones = ones.data();
    const int64_t M = P.N * P.Ho * P.Wo;
    for (int scaled = 0; scaled < 2; ++scaled) {
      std::vector<float> out(M * c.O, NAN);
      P.scale = scaled ? scale.data() : nullptr;
      P.out = out.data();
      // uneven blocks and panel groups, as the threaded driver may cut them
      const int64_t mb = 5;
      std::vector<uint64_t> scratch(cpu::conv_scratch_words(P, mb));
      for (int64_t m0 = 0; m0 < M; m0 += mb)
        for (int64_t p0 = 0; p0 < npan; p0 += 2)
          k->conv_block(P, m0, m0 + mb < M ? m0 + mb : M, p0, p0 + 2 < npan ? p0 + 2 : npan, scratch.data());
      const std::vector<float> want = naive_conv(x, w, scaled ? &scale : nullptr, P);
      int bad = 0;
      for (size_t i = 0; i < out.size(); ++i) bad += std::memcmp(&out[i], &want[i], sizeof(float)) != 0;
      CHECK(bad == 0, "%s conv N=%lld C=%lld %lldx%lld O=%lld k=%lldx%lld s=%lld p=%lld d=%lld scaled=%d: %d wrong",
            name, (long long)c.N, (long long)c.C, (long long)c.H, (long long)c.W, (long long)c.O, (long long)c.kh,
            (long long)c.kw, (long long)c.s, (long long)c.p, (long long)c.d, scaled, bad);
    }
  }
  uint64_t sink = 0;
  CHECK(k->peak_probe(16, 10, &sink) == 10 * 16 * k->mr * k->nr, "%s peak probe count", name);
}

int main() {
  test_popcount_and_dot();
  test_transpose();
  test_geometry();
  const char* names[8];
  const int n = cpu::supported_levels(names, 8);
  CHECK(n >= 1 && std::strcmp(names[n - 1], "scalar") == 0, "scalar level always supported");
  for (int i = 0; i < n && i < 8; ++i) {
    std::printf("testing SIMD level %s\n", names[i]);
    test_level(names[i]);
  }
  CHECK(cpu::level_kernels("sse9") == nullptr && !cpu::is_known_level("sse9"), "unknown level");
  test_lut();
  test_planes();
  if (g_failures) {
    std::printf("%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all core checks passed\n");
  return 0;
}
