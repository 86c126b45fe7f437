// irnet CPU: the position-vectorized popcount ("planes") binary convolution (see
// xnor_planes.h for the maths and the layout).  The layout helpers are portable; the
// kernels are compiled for AVX-512 (BW, VL, VPOPCNTDQ, BITALG) under a target pragma and
// handed out only where the CPU has it.  Torch-free.
#include "cpu/xnor_planes.h"

#include "core/conv_geometry.h"
#include "cpu/fused_epilogue.h"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define IRNET_PLANES_X86 1
#include <immintrin.h>
#else
#define IRNET_PLANES_X86 0
#endif

namespace irnet {
namespace cpu {

namespace {
using core::ceil_div;

// The register tile (the shapes tried: xnor_planes.h); the weights are padded to whole
// tiles of kTileChannels.
constexpr int kTileChannels = 8;  // OB
// NV: 2 vectors for 16-bit lanes, 3 otherwise
constexpr int tile_vectors(int lane_bits) { return lane_bits == 16 ? 2 : 3; }
constexpr int kMaxTileVectors = 3;

// Matches a lane of L bits holds before it must be widened: at most L per step.
constexpr int64_t max_steps(int L) { return L >= 32 ? (int64_t(1) << 40) : ((int64_t(1) << L) - 1) / L; }
}  // namespace

int planes_lane_bits(int64_t C) {
  if (C <= 8) return 8;
  int best = 64;
  const int candidates[] = {32, 16};
  for (int L : candidates)
    if (ceil_div(C, L) * L < ceil_div(C, best) * best) best = L;
  return best;
}

PlanesLayout planes_layout(const ConvProblem& P) {
  PlanesLayout Y;
  Y.lane_bits = planes_lane_bits(P.C);
  Y.vec = 512 / Y.lane_bits;
  Y.ob = kTileChannels;
  Y.nv = tile_vectors(Y.lane_bits);
  Y.G = plane_geometry(P, Y.lane_bits, Y.vec, int64_t(Y.vec) * Y.nv);
  Y.per_row = ceil_div(P.Wo, Y.vec);
  const int64_t grid_vectors = ceil_div(Y.G.Qn, Y.vec), row_vectors = P.Ho * Y.per_row;
  Y.rows = row_vectors <= grid_vectors;
  Y.vectors = Y.rows ? row_vectors : grid_vectors;
  Y.chunk_taps = max_steps(Y.lane_bits) / Y.G.groups;
  if (Y.chunk_taps > Y.G.T) Y.chunk_taps = Y.G.T;
  // a vector starting at a sub-plane position reads up to one vector past the sub-planes
  // (the slack of plane_geometry, which the x planes have too)
  Y.mask_total = Y.G.S * Y.G.plane + (Y.G.total - P.N * Y.G.image);
  return Y;
}

void planes_weights(const uint64_t* w, const ConvProblem& P, const PlanesLayout& Y, int64_t t0, int64_t t1,
                    uint64_t* dst) {
  const int L = Y.lane_bits, OB = Y.ob;
  const int64_t G = Y.G.groups, T = Y.G.T, K = Y.G.K;
  const uint64_t lane = L == 64 ? ~uint64_t(0) : (uint64_t(1) << L) - 1;
  for (int64_t tile = t0; tile < t1; ++tile) {
    uint64_t* out = dst + tile * K * OB;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t g = 0; g < G; ++g)
        for (int q = 0; q < OB; ++q) {
          const int64_t o = tile * OB + q;
          uint64_t v = 0;
          if (o < P.O) {
            const int64_t c0 = g * L;
            v = (w[(o * T + t) * P.words + c0 / 64] >> (c0 % 64)) & lane;
            // channels past C: 1 against the input's 0, never a match
            if (P.C - c0 < L) v |= lane & ~((uint64_t(1) << (P.C - c0)) - 1);
            for (int r = L; r < 64; r *= 2) v |= v << r;
          }
          out[(t * G + g) * OB + q] = v;
        }
  }
}

namespace {
template <class E>
void fill_mask(const ConvProblem& P, const PlanesLayout& Y, E* m) {
  const PlaneGeometry& G = Y.G;
  for (int64_t i = 0; i < Y.mask_total; ++i) m[i] = 0;
  for (int64_t a = 0; a < P.sh; ++a)
    for (int64_t r = 0; r < G.Hq; ++r) {
      const int64_t y = r * P.sh + a;  // padded row
      if (y < P.ph || y >= P.ph + P.H) continue;
      for (int64_t b = 0; b < P.sw; ++b) {
        E* row = m + ((a * P.sw + b) * G.Hq + r) * G.Wq;
        // padded columns c*sw + b in [pw, pw + W)
        const int64_t c0 = ceil_div(P.pw - b > 0 ? P.pw - b : 0, P.sw), c1 = ceil_div(P.pw + P.W - b, P.sw);
        for (int64_t c = c0; c < c1 && c < G.Wq; ++c) row[c] = E(~E(0));
      }
    }
}
}  // namespace

void planes_tables(const ConvProblem& P, const PlanesLayout& Y, PlanesTables& out) {
  const PlaneGeometry& G = Y.G;
  out.xoff.resize(size_t(G.K));
  plane_offsets(P, G, out.xoff.data());  // (the first T: group 0)
  std::vector<int32_t> kin(size_t(G.Qk));
  plane_kin(P, G, kin.data());
  out.kin.assign(kin.begin(), kin.end());
  out.mask.resize(size_t(Y.mask_total * (Y.lane_bits / 8)));
  switch (Y.lane_bits) {
    case 8: fill_mask(P, Y, reinterpret_cast<uint8_t*>(out.mask.data())); break;
    case 16: fill_mask(P, Y, reinterpret_cast<uint16_t*>(out.mask.data())); break;
    case 32: fill_mask(P, Y, reinterpret_cast<uint32_t*>(out.mask.data())); break;
    default: fill_mask(P, Y, reinterpret_cast<uint64_t*>(out.mask.data())); break;
  }
  // vectors and their runs of output columns; a run is a vector's share of one output row
  // (at most vectors + Ho - 1 of them: each next run advances the vector or the row)
  const int64_t V = Y.vec, Wq = G.Wq;
  out.vq.resize(size_t(Y.vectors));
  out.run_begin.resize(size_t(Y.vectors + 1));
  out.runs.clear();
  out.runs.reserve(size_t(Y.vectors + P.Ho));
  for (int64_t v = 0; v < Y.vectors; ++v) {
    out.run_begin[v] = int64_t(out.runs.size());
    if (Y.rows) {
      const int64_t ho = v / Y.per_row, wo = (v % Y.per_row) * V;
      out.vq[v] = ho * Wq + wo;
      out.runs.push_back(PlanesRun{0, P.Wo - wo < V ? P.Wo - wo : V, ho * P.Wo + wo});
      continue;
    }
    const int64_t qt = v * V, qe = qt + V < G.Qn ? qt + V : G.Qn;
    out.vq[v] = qt;
    for (int64_t ho = qt / Wq, q = qt; q < qe; ++ho, q = ho * Wq) {
      const int64_t wa = q - ho * Wq, wb = qe - ho * Wq < P.Wo ? qe - ho * Wq : P.Wo;
      if (wa < wb) out.runs.push_back(PlanesRun{q - qt, wb - wa, ho * P.Wo + wa});
    }
  }
  out.run_begin[Y.vectors] = int64_t(out.runs.size());
  out.max_runs = 0;
  for (int64_t v = 0; v < Y.vectors; ++v)
    if (out.run_begin[v + 1] - out.run_begin[v] > out.max_runs) out.max_runs = out.run_begin[v + 1] - out.run_begin[v];
}

PlanesTableView planes_table_view(const PlanesTables& t) {
  PlanesTableView v;
  v.xoff = t.xoff.data();
  v.kin = t.kin.data();
  v.mask = t.mask.data();
  v.vq = t.vq.data();
  v.run_begin = t.run_begin.data();
  v.runs = t.runs.data();
  v.max_runs = t.max_runs;
  return v;
}

#if IRNET_PLANES_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx512bitalg,avx2,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx512bitalg,avx2,popcnt")
// GCC 12's own avx512 intrinsic headers trip -Wmaybe-uninitialized (_mm512_undefined_*)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace planes_avx512 {

constexpr int OB = kTileChannels;
constexpr int NVMAX = kMaxTileVectors;

// The lane width's element type, popcount and add, and the widening of a vector of
// counts into int32 pieces of (up to) 16 positions: piece i holds positions 16i.. of the
// vector (L = 64: one piece, its 8 positions in the low half).
template <int L>
struct Lane;
template <>
struct Lane<8> {
  using elem = uint8_t;
  static constexpr int kPieces = 4;
  static IRNET_INLINE __m512i popcnt(__m512i v) { return _mm512_popcnt_epi8(v); }
  static IRNET_INLINE __m512i add(__m512i a, __m512i b) { return _mm512_add_epi8(a, b); }
  static IRNET_INLINE void pieces(__m512i a, __m512i* out) {
    out[0] = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(a));
    out[1] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(a, 1));
    out[2] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(a, 2));
    out[3] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(a, 3));
  }
};
template <>
struct Lane<16> {
  using elem = uint16_t;
  static constexpr int kPieces = 2;
  static IRNET_INLINE __m512i popcnt(__m512i v) { return _mm512_popcnt_epi16(v); }
  static IRNET_INLINE __m512i add(__m512i a, __m512i b) { return _mm512_add_epi16(a, b); }
  static IRNET_INLINE void pieces(__m512i a, __m512i* out) {
    out[0] = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(a));
    out[1] = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(a, 1));
  }
};
template <>
struct Lane<32> {
  using elem = uint32_t;
  static constexpr int kPieces = 1;
  static IRNET_INLINE __m512i popcnt(__m512i v) { return _mm512_popcnt_epi32(v); }
  static IRNET_INLINE __m512i add(__m512i a, __m512i b) { return _mm512_add_epi32(a, b); }
  static IRNET_INLINE void pieces(__m512i a, __m512i* out) { out[0] = a; }
};
template <>
struct Lane<64> {
  using elem = uint64_t;
  static constexpr int kPieces = 1;
  static IRNET_INLINE __m512i popcnt(__m512i v) { return _mm512_popcnt_epi64(v); }
  static IRNET_INLINE __m512i add(__m512i a, __m512i b) { return _mm512_add_epi64(a, b); }
  // (a dot's count < 2^31: the driver checks C*kh*kw)
  static IRNET_INLINE void pieces(__m512i a, __m512i* out) { out[0] = _mm512_castsi256_si512(_mm512_cvtepi64_epi32(a)); }
};

// The first n (clamped to [0, 16]) of 16 lanes.
IRNET_INLINE __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// acc[o][p] = the L-bit lane counts of taps [t0, t1) (every group), see tile below.
template <int L, int NVT>
IRNET_INLINE void accumulate(const typename Lane<L>::elem* const* x, const typename Lane<L>::elem* const* m,
                             const int64_t* xoff, int64_t t0, int64_t t1, int64_t G, int64_t gstride,
                             const uint64_t* w, __m512i (&acc)[OB][NVT]) {
  using Ln = Lane<L>;
  using E = typename Ln::elem;
  const E* xs[NVT];  // (local copies: kept in registers)
  const E* ms[NVT];
#pragma GCC unroll 8
  for (int p = 0; p < NVT; ++p) xs[p] = x[p], ms[p] = m[p];
#pragma GCC unroll 16
  for (int o = 0; o < OB; ++o)
#pragma GCC unroll 8
    for (int p = 0; p < NVT; ++p) acc[o][p] = _mm512_setzero_si512();
  // one step: the lanes at element offset off against the weights wt[0, OB)
  const auto step = [&](int64_t off, const __m512i* mv, const uint64_t* wt) __attribute__((always_inline)) {
    __m512i xv[NVT];
#pragma GCC unroll 8
    for (int p = 0; p < NVT; ++p) xv[p] = _mm512_loadu_si512(xs[p] + off);
#pragma GCC unroll 16
    for (int o = 0; o < OB; ++o) {
      const __m512i wb = _mm512_set1_epi64(static_cast<long long>(wt[o]));
#pragma GCC unroll 8
      for (int p = 0; p < NVT; ++p)
        acc[o][p] = Ln::add(acc[o][p], Ln::popcnt(_mm512_ternarylogic_epi64(xv[p], wb, mv[p], 0x82)));
    }
  };
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t off = xoff[t];
    __m512i mv[NVT];
#pragma GCC unroll 8
    for (int p = 0; p < NVT; ++p) mv[p] = _mm512_loadu_si512(ms[p] + off);
    const uint64_t* wt = w + t * G * OB;
    if (G == 1) {  // (up to 64 channels: no group loop)
      step(off, mv, wt);
      continue;
    }
    for (int64_t g = 0; g < G; ++g, wt += OB) step(off + g * gstride, mv, wt);
  }
}

// Register tile: OB output channels x NVT vectors of V = 512/L grid positions.
//   count[o][p][i] = sum over taps t, groups g of
//                    popcount(~(x[g, t][p][i] ^ w[t, g, o]) & m[t][p][i])
// x[p] / m[p]: the group-0 plane / the mask plane at vector p's first position; tap t of
// group g at + xoff[t] + g * gstride (mask: + xoff[t]).  w: [K][OB] (planes_weights).
// At the end epi(o, p, pieces) gets the int32 count pieces of channel o, vector p, in
// registers.  A dot longer than `chunk` taps (the L-bit lanes' capacity) goes in chunks,
// the counts of all but the last parked as int32 pieces in part[OB][NVT][kPieces][16].
template <int L, int NVT, class Epi>
IRNET_INLINE void tile(const typename Lane<L>::elem* const* x, const typename Lane<L>::elem* const* m,
                       const int64_t* xoff, int64_t T, int64_t G, int64_t gstride, int64_t chunk, const uint64_t* w,
                       int32_t* part, Epi& epi) {
  using Ln = Lane<L>;
  constexpr int NP = Ln::kPieces;
  __m512i acc[OB][NVT];
  if (chunk >= T) {  // (all but the longest dots: no partial counts)
    accumulate<L, NVT>(x, m, xoff, 0, T, G, gstride, w, acc);
#pragma GCC unroll 16
    for (int o = 0; o < OB; ++o)
#pragma GCC unroll 8
      for (int p = 0; p < NVT; ++p) {
        __m512i c[NP];
        Ln::pieces(acc[o][p], c);
        epi(o, p, c);
      }
    return;
  }
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t t1 = t0 + chunk < T ? t0 + chunk : T;
    accumulate<L, NVT>(x, m, xoff, t0, t1, G, gstride, w, acc);
#pragma GCC unroll 16
    for (int o = 0; o < OB; ++o)
#pragma GCC unroll 8
      for (int p = 0; p < NVT; ++p) {
        __m512i c[NP];
        Ln::pieces(acc[o][p], c);
        int32_t* pp = part + (o * NVT + p) * NP * 16;
#pragma GCC unroll 4
        for (int i = 0; i < NP; ++i) {
          if (t0 > 0) c[i] = _mm512_add_epi32(c[i], _mm512_loadu_si512(pp + 16 * i));
          if (t1 < T) _mm512_storeu_si512(pp + 16 * i, c[i]);
        }
        if (t1 == T) epi(o, p, c);
      }
  }
}

// dst[j] = src[j], j < n (a run of y: shorter than a libc call's overhead)
IRNET_INLINE void copy_run(const float* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = first_lanes(n - j);
    _mm512_mask_storeu_ps(dst + j, k, _mm512_maskz_loadu_ps(k, src + j));
  }
}

// The channels_last store of staged y: out[j * stride + k] = y[k * ld + j] for k < nc <= 8
// channels and j < np <= 16 pixels, 16 x 8 at a time in registers: 8 unpacks of float
// pairs and 8 of 64-bit pairs leave u[a] (channels 0-3) and u[a + 4] (4-7) holding pixel
// 4l + a in 128-bit lane l; 8 two-source permutes then put pixels a and a + 4 (and a + 8,
// a + 12) side by side, 8 channels each, stored as two masked halves.  (24 shuffles per
// 128 values, against 24 per 64 in the AVX2 8 x 8 transpose.)  With f set, the fused
// epilogue on the way (as in block()): f->alpha, f->beta for the nc channels, f->res laid
// out like out (or null).
struct ClFused {  // the fused epilogue's arguments for transpose_store
  const float* alpha;
  const float* beta;
  const float* res;
  float lo, hi;
};
// The 8 floats at p (k: those read) in both 256-bit halves.
IRNET_INLINE __m512 twice8(__mmask8 k, const float* p) {
  const __m256d v = _mm256_castps_pd(_mm256_maskz_loadu_ps(k, p));
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(v), v, 1));
}
IRNET_INLINE void transpose_store(const float* y, int64_t ld, int nc, int np, float* out, int64_t stride,
                                  const ClFused* f) {
  const __mmask16 kp = first_lanes(np);
  __m512 r[8];
  for (int k = 0; k < 8; ++k) r[k] = k < nc ? _mm512_maskz_loadu_ps(kp, y + k * ld) : _mm512_setzero_ps();
  __m512 t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);      // lane l: k[4l] k+1[4l] k[4l+1] k+1[4l+1]
    t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);  // lane l: k[4l+2] k+1[4l+2] k[4l+3] k+1[4l+3]
  }
  for (int h = 0; h < 8; h += 4)
    for (int e = 0; e < 2; ++e) {  // u[a]: pixel 4l + a of channels h..h+3, a = 2e, 2e + 1
      const __m512d lo = _mm512_castps_pd(t[h + e]), hi = _mm512_castps_pd(t[h + 2 + e]);
      u[h / 4 * 4 + 2 * e] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
      u[h / 4 * 4 + 2 * e + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
    }
  const __m512i pick[2] = {_mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23),
                           _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31)};
  const __mmask8 kc = __mmask8((1u << nc) - 1);
  __m512 fa = _mm512_setzero_ps(), fb = fa, flo = fa, fhi = fa;
  if (f) fa = twice8(kc, f->alpha), fb = twice8(kc, f->beta), flo = _mm512_set1_ps(f->lo), fhi = _mm512_set1_ps(f->hi);
  for (int a = 0; a < 4; ++a)
    for (int h = 0; h < 2; ++h) {  // pixels 8h + a (lanes 0-7) and 8h + 4 + a (lanes 8-15)
      __m512 w = _mm512_permutex2var_ps(u[a], pick[h], u[a + 4]);
      const int p0 = 8 * h + a, p1 = p0 + 4;
      if (f) {
        w = _mm512_add_ps(_mm512_mul_ps(w, fa), fb);
        if (f->res) {
          const __m256d r0 = _mm256_castps_pd(p0 < np ? _mm256_maskz_loadu_ps(kc, f->res + p0 * stride) : _mm256_setzero_ps());
          const __m256d r1 = _mm256_castps_pd(p1 < np ? _mm256_maskz_loadu_ps(kc, f->res + p1 * stride) : _mm256_setzero_ps());
          w = _mm512_add_ps(w, _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(r0), r1, 1)));
        }
        w = _mm512_min_ps(fhi, _mm512_max_ps(flo, w));  // (as in block())
      }
      // (256-bit stores: a 512-bit masked store reaching into the previous pixel's line
      // was 3x slower here)
      if (p0 < np) _mm256_mask_storeu_ps(out + p0 * stride, kc, _mm512_castps512_ps256(w));
      if (p1 < np)
        _mm256_mask_storeu_ps(out + p1 * stride, kc, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w), 1)));
    }
}

// Runs per vector that the NCHW epilogue stores directly (more: staged and copied).
constexpr int kMaxRuns = 4;

// scratch: part [OB][NVMAX][64] int32, y [channels][kBlock] float
constexpr int64_t kBlock = int64_t(NVMAX) * 64 + 16;  // a y row: the positions of a tile's vectors, at most (+ a piece)
int64_t scratch_bytes(const PlanesLayout&, int64_t channels) {
  return int64_t(sizeof(int32_t)) * OB * NVMAX * 64 + int64_t(sizeof(float)) * channels * kBlock + 64;
}

// How the epilogue stores y: NCHW straight to the output, one run per vector (vectors at
// row starts) or up to kMaxRuns; or staged (channels_last, or more runs per vector).
enum StoreMode { kOneRun, kRuns, kStaged };

// A channel tile's weights and where its y go (block below).
struct TileOut {
  const uint64_t* w = nullptr;  // the tile's weights (planes_weights)
  const float* scale = nullptr; // its channels' scales
  int64_t nch = 0;              // its channels (< OB: the last tile of a layer)
  float* out = nullptr;         // y of channel o: out + o * step (+ the run's offset in the direct modes)
  int64_t step = 0;
  // the fused epilogue (direct modes), where alpha is set: clamp((y * alpha + beta) + res),
  // res (if set) laid out like out
  const float* alpha = nullptr;
  const float* beta = nullptr;
  const float* res = nullptr;
  float lo = 0.0f, hi = 0.0f;
};

// One register-tile block: vectors [v, v + NVT) of the image whose planes start at xim,
// the channel tile of `to`: y into the vectors' output runs (direct modes, to.out = the
// tile's first output plane) or to block position p * V + i (kStaged), with the fused
// epilogue in the registers (direct modes) as fused_value in cpu/fused_epilogue.h: the
// multiply, the add, the residual's add each rounded, then x < lo -> lo, x > hi -> hi
// (NaN kept).  Everything the epilogue reads is local here, so that it stays in registers
// across its stores.
template <int L, int MODE, int NVT>
void block(const PlanesTableView& Tb, const typename Lane<L>::elem* xim, int64_t v, int64_t T, int64_t G,
           int64_t gstride, int64_t chunk, const TileOut& to, int32_t* part) {
  using E = typename Lane<L>::elem;
  constexpr int V = 512 / L, NP = Lane<L>::kPieces;
  constexpr int RUNS = MODE == kRuns ? kMaxRuns : 1;
  constexpr __mmask16 kPieceLanes = V >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << V) - 1);  // a piece's positions
  const E* mask = static_cast<const E*>(Tb.mask);
  const float* scale = to.scale;
  const int64_t nch = to.nch, step = to.step;
  const bool fused = MODE != kStaged && to.alpha != nullptr;
  const float *alpha = to.alpha, *beta = to.beta;
  const __m512 lo = _mm512_set1_ps(to.lo), hi = _mm512_set1_ps(to.hi);
  const E* xp[NVT];
  const E* mp[NVT];
  const float* kin[NVT];            // each vector's K_in
  int nrun[NVT];                    // its runs (kOneRun, kStaged: one)
  float* dst[NVT][RUNS];            // where lane 0 of run r's vector goes (channel 0)
  const float* rsd[NVT][RUNS];      // the same in the residual
  __mmask16 keep[NVT][RUNS][NP];    // which lanes of each piece belong to run r
  for (int p = 0; p < NVT; ++p) {
    const int64_t q = Tb.vq[v + p];
    xp[p] = xim + q;
    mp[p] = mask + q;
    kin[p] = Tb.kin + q;
    if constexpr (MODE == kStaged) {
      nrun[p] = 1;
      dst[p][0] = to.out + p * V;
      rsd[p][0] = nullptr;
      for (int i = 0; i < NP; ++i) keep[p][0][i] = kPieceLanes;
    } else {
      const int64_t r0 = Tb.run_begin[v + p];
      nrun[p] = int(Tb.run_begin[v + p + 1] - r0);
      for (int r = 0; r < nrun[p]; ++r) {
        const PlanesRun& R = Tb.runs[r0 + r];
        // (masked stores and loads: lanes outside the run touch no memory)
        dst[p][r] = to.out + (R.m - R.i0);
        rsd[p][r] = to.res ? to.res + (R.m - R.i0) : nullptr;
        for (int i = 0; i < NP; ++i) keep[p][r][i] = first_lanes(R.i0 + R.len - 16 * i) & ~first_lanes(R.i0 - 16 * i);
      }
    }
  }
  const __m512 two = _mm512_set1_ps(2.0f);
  const auto epi = [&](int o, int p, const __m512i* c) __attribute__((always_inline)) {
    if (o >= nch) return;  // channels past O (weight rows padded to whole tiles)
    const __m512 s = _mm512_set1_ps(scale[o]);
    const int runs_p = MODE == kRuns ? nrun[p] : 1;
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) {
      const __m512 d =
          _mm512_fmsub_ps(_mm512_cvtepi32_ps(c[i]), two, _mm512_maskz_loadu_ps(kPieceLanes, kin[p] + 16 * i));
      __m512 y = _mm512_mul_ps(d, s);
      if (fused) {
        y = _mm512_add_ps(_mm512_mul_ps(y, _mm512_set1_ps(alpha[o])), _mm512_set1_ps(beta[o]));
        if (rsd[p][0]) {
          __m512 r = _mm512_setzero_ps();
          for (int q = 0; q < runs_p; ++q) r = _mm512_mask_loadu_ps(r, keep[p][q][i], rsd[p][q] + o * step + 16 * i);
          y = _mm512_add_ps(y, r);
        }
        // (VMAXPS / VMINPS return the second operand unless the first compares greater /
        // less: lo > y ? lo : y and hi < y ? hi : y, fused_value's order, NaN y kept)
        y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));
      }
      for (int r = 0; r < runs_p; ++r) _mm512_mask_storeu_ps(dst[p][r] + o * step + 16 * i, keep[p][r][i], y);
    }
  };
  tile<L, NVT>(xp, mp, Tb.xoff, T, G, gstride, chunk, to.w, part, epi);
}

// block() for the last nv <= NVT vectors of an image's vectors.
template <int L, int MODE, int NVT>
IRNET_INLINE void block_vectors(int nv, const PlanesTableView& Tb, const typename Lane<L>::elem* xim, int64_t v,
                                int64_t T, int64_t G, int64_t gstride, int64_t chunk, const TileOut& to,
                                int32_t* part) {
  if (nv == NVT) {
    block<L, MODE, NVT>(Tb, xim, v, T, G, gstride, chunk, to, part);
  } else if constexpr (NVT > 1) {
    block_vectors<L, MODE, NVT - 1>(nv, Tb, xim, v, T, G, gstride, chunk, to, part);
  }
}

// Vectors [v0, v1) of image n, output channels [o0, o1).  The tile's epilogue turns the
// count pieces into y = float(2 * count - K_in) * scale, as
//   y = fmsub(float(count), 2, float(K_in)) * scale
// (the FMA rounds once the exact integer 2 * count - K_in, |.| < 2^24: exactly float(dot);
// then the one rounding of the product, as the other kernels) and stores them:
//  * NCHW output (kOneRun, kRuns): straight from the registers into the output runs, a
//    piece of 16 positions as one masked store per run it overlaps, the fused epilogue
//    in the registers too; channel tiles outer, vector blocks inner;
//  * channels_last, or NCHW with more than kMaxRuns runs in a vector (kStaged): vector
//    blocks outer, every channel of a block staged in y, then copied run by run (NCHW) or
//    8 pixels x 8 channels at a time transposed into the pixels (channels_last).
// (kStaged: the fused epilogue runs on each run just written, in cache.)
template <int L, int MODE>
void conv_block_lanes(const PlanesProblem& Q, int64_t n, int64_t v0, int64_t v1, int64_t o0, int64_t o1,
                      void* scratch) {
  using E = typename Lane<L>::elem;
  constexpr int V = 512 / L, NV = tile_vectors(L);
  const ConvProblem& P = *Q.P;
  const PlanesLayout& Y = Q.Y;
  const PlanesTableView& Tb = Q.tables;
  const int64_t T = Y.G.T, G = Y.G.groups, K = Y.G.K, gstride = Y.G.S * Y.G.plane, chunk = Y.chunk_taps;
  const int64_t O = P.O, HWo = P.Ho * P.Wo, nch = o1 - o0;
  auto* base = static_cast<unsigned char*>(scratch);
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  int32_t* part = reinterpret_cast<int32_t*>(base);
  float* ybuf = reinterpret_cast<float*>(part + OB * NVMAX * 64);
  const E* xim = static_cast<const E*>(Q.planes) + n * Y.G.image;
  const PlanesRun* runs = Tb.runs;
  const int64_t* run_begin = Tb.run_begin;
  // the block of vectors [v, v + nv) for channel tile ot, y to out + channel * step
  // (direct modes: out = the tile's first output plane, fused epilogue included)
  auto run = [&](int64_t v, int nv, int64_t ot, float* out, int64_t step) {
    TileOut to;
    to.w = Q.w + (ot / OB) * K * OB;
    to.scale = Q.scale + ot;
    to.nch = o1 - ot < OB ? o1 - ot : OB;
    to.out = out;
    to.step = step;
    if (MODE != kStaged && P.alpha) {
      to.alpha = P.alpha + ot, to.beta = P.beta + ot, to.lo = P.lo, to.hi = P.hi;
      if (P.residual) to.res = P.residual + (out - P.out);
    }
    block_vectors<L, MODE, NV>(nv, Tb, xim, v, T, G, gstride, chunk, to, part);
  };
  if (MODE != kStaged) {
    for (int64_t ot = o0; ot < o1; ot += OB)
      for (int64_t v = v0; v < v1; v += NV)
        run(v, int(v1 - v < NV ? v1 - v : NV), ot, P.out + (n * O + ot) * HWo, HWo);
    return;
  }
  for (int64_t v = v0; v < v1; v += NV) {
    const int nv = int(v1 - v < NV ? v1 - v : NV);
    for (int64_t ot = o0; ot < o1; ot += OB) run(v, nv, ot, ybuf + (ot - o0) * kBlock, kBlock);
    for (int p = 0; p < nv; ++p)
      for (int64_t r = run_begin[v + p]; r < run_begin[v + p + 1]; ++r) {
        const PlanesRun& R = runs[r];
        const float* y = ybuf + p * V + R.i0;
        if (!P.out_cl) {  // NCHW, many runs per vector: each channel's run copied
          for (int64_t o = o0; o < o1; ++o) {
            float* dst = P.out + (n * O + o) * HWo + R.m;
            copy_run(y + (o - o0) * kBlock, dst, R.len);
            if (P.alpha) {
              const int64_t at = dst - P.out;
              fused_run(dst, P.residual ? P.residual + at : nullptr, R.len, P.alpha[o], P.beta[o], P.lo, P.hi);
            }
          }
          continue;
        }
        const int64_t at = (n * HWo + R.m) * O + o0;  // the run's first pixel
        for (int64_t j = 0; j < R.len; j += 16)
          for (int64_t c = 0; c < nch; c += 8) {
            ClFused f{};
            if (P.alpha)
              f = ClFused{P.alpha + o0 + c, P.beta + o0 + c, P.residual ? P.residual + at + j * O + c : nullptr, P.lo,
                            P.hi};
            transpose_store(y + c * kBlock + j, kBlock, int(nch - c < 8 ? nch - c : 8), int(R.len - j < 16 ? R.len - j : 16),
                            P.out + at + j * O + c, O, P.alpha ? &f : nullptr);
          }
      }
  }
}

template <int L>
void conv_block_mode(const PlanesProblem& Q, int64_t n, int64_t v0, int64_t v1, int64_t o0, int64_t o1, void* scratch) {
  const int64_t runs = Q.tables.max_runs;
  if (Q.P->out_cl || runs > kMaxRuns)
    conv_block_lanes<L, kStaged>(Q, n, v0, v1, o0, o1, scratch);
  else if (runs == 1)
    conv_block_lanes<L, kOneRun>(Q, n, v0, v1, o0, o1, scratch);
  else
    conv_block_lanes<L, kRuns>(Q, n, v0, v1, o0, o1, scratch);
}

void conv_block(const PlanesProblem& Q, int64_t n, int64_t v0, int64_t v1, int64_t o0, int64_t o1, void* scratch) {
  switch (Q.Y.lane_bits) {
    case 8: conv_block_mode<8>(Q, n, v0, v1, o0, o1, scratch); break;
    case 16: conv_block_mode<16>(Q, n, v0, v1, o0, o1, scratch); break;
    case 32: conv_block_mode<32>(Q, n, v0, v1, o0, o1, scratch); break;
    default: conv_block_mode<64>(Q, n, v0, v1, o0, o1, scratch); break;
  }
}

// ---------------------------------------------------------------- the planes
// Elements of group g (channels [c0, c0 + L)) for the W pixels of input row h of image n,
// into dst[0, W): from the packed bits, the L bits at c0 of each pixel's words, those of
// channels past C cleared (the weights' are set: a stray input bit there would match).
template <int L>
void row_elements_packed(const ConvProblem& P, int64_t n, int64_t h, int64_t g, typename Lane<L>::elem* dst) {
  using E = typename Lane<L>::elem;
  const int64_t words = P.words, c0 = g * L, W = P.W;
  const uint64_t* src = P.x + (n * P.H + h) * W * words + c0 / 64;
  const int shift = int(c0 % 64);
  const uint64_t valid = P.C - c0 >= L ? ~uint64_t(0) : (uint64_t(1) << (P.C - c0)) - 1;
  int64_t w = 0;
  if (words == 1) {  // 8 pixels at a time: shift, mask, then VPMOVQ{B,W,D} keeps each word's low L bits
    const __m128i sh = _mm_cvtsi32_si128(shift);
    const __m512i keep = _mm512_set1_epi64(static_cast<long long>(valid));
    for (; w + 8 <= W; w += 8) {
      const __m512i v = _mm512_and_si512(_mm512_srl_epi64(_mm512_loadu_si512(src + w), sh), keep);
      if constexpr (L == 8) _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + w), _mm512_cvtepi64_epi8(v));
      if constexpr (L == 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + w), _mm512_cvtepi64_epi16(v));
      if constexpr (L == 32) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + w), _mm512_cvtepi64_epi32(v));
      if constexpr (L == 64) _mm512_storeu_si512(dst + w, v);
    }
  }
  for (; w < W; ++w) dst[w] = E((src[w * words] >> shift) & valid);
}

// The same from float32 NCHW activations, bit c of a pixel's element = x[n, c0 + c, h, w] < 0
// (false for -0.0 and NaN), NCH chunks of 16 pixels at a time: each channel's row read in
// order (one stream per channel: the rows are a plane apart, so chunk-major reads of many
// channels fight over the same L1 sets), compared with VCMPPS, and its bit OR-ed into the
// pixel's int32 lane under the compare's mask; 32 channels per lane (L = 64: two lanes).
template <int NCH>
IRNET_INLINE void sign_bits(const float* src, int64_t HW, int64_t lo, int64_t hi, const __mmask16* k, __m512i* a) {
  const __m512 zero = _mm512_setzero_ps();
  __m512i bit = _mm512_set1_epi32(1);
#pragma GCC unroll 4
  for (int j = 0; j < NCH; ++j) a[j] = _mm512_setzero_si512();
  for (int64_t c = lo; c < hi; ++c, bit = _mm512_add_epi32(bit, bit)) {
    const float* row = src + c * HW;
#pragma GCC unroll 4
    for (int j = 0; j < NCH; ++j) {
      const __mmask16 neg = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(k[j], row + 16 * j), zero, _CMP_LT_OQ);
      a[j] = _mm512_mask_or_epi32(a[j], neg, a[j], bit);
    }
  }
}

template <int L, int NCH>
IRNET_INLINE void float_chunks(const float* src, int64_t HW, int64_t c0, int64_t c1, int64_t n,
                               typename Lane<L>::elem* dst) {
  __mmask16 k[NCH];
  for (int j = 0; j < NCH; ++j) k[j] = first_lanes(n - 16 * j);
  __m512i lo[NCH], hi[NCH];
  sign_bits<NCH>(src, HW, c0, c1 < c0 + 32 ? c1 : c0 + 32, k, lo);
  if constexpr (L == 64) sign_bits<NCH>(src, HW, c0 + 32, c1, k, hi);
#pragma GCC unroll 4
  for (int j = 0; j < NCH; ++j) {
    auto* d = dst + 16 * j;
    if constexpr (L == 8) _mm_mask_storeu_epi8(d, k[j], _mm512_cvtepi32_epi8(lo[j]));
    if constexpr (L == 16) _mm256_mask_storeu_epi16(d, k[j], _mm512_cvtepi32_epi16(lo[j]));
    if constexpr (L == 32) _mm512_mask_storeu_epi32(d, k[j], lo[j]);
    if constexpr (L == 64) {
      const __m512i l0 = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(lo[j]));
      const __m512i l1 = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(lo[j], 1));
      const __m512i h0 = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(hi[j]));
      const __m512i h1 = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(hi[j], 1));
      _mm512_mask_storeu_epi64(d, __mmask8(k[j]), _mm512_or_si512(l0, _mm512_slli_epi64(h0, 32)));
      _mm512_mask_storeu_epi64(d + 8, __mmask8(k[j] >> 8), _mm512_or_si512(l1, _mm512_slli_epi64(h1, 32)));
    }
  }
}

template <int L>
void row_elements_float(const ConvProblem& P, int64_t n, int64_t h, int64_t g, typename Lane<L>::elem* dst) {
  const int64_t c0 = g * L, c1 = P.C < c0 + L ? P.C : c0 + L, W = P.W, HW = P.H * P.W;
  const float* src = P.xf + (n * P.C * P.H + h) * W;
  int64_t w = 0;
  for (; w + 64 <= W; w += 64) float_chunks<L, 4>(src + w, HW, c0, c1, 64, dst + w);
  const int64_t rest = W - w;
  if (rest > 32)
    float_chunks<L, 4>(src + w, HW, c0, c1, rest, dst + w);
  else if (rest > 16)
    float_chunks<L, 2>(src + w, HW, c0, c1, rest, dst + w);
  else if (rest > 0)
    float_chunks<L, 1>(src + w, HW, c0, c1, rest, dst + w);
}

// dst0[c] = src[2c], dst1[c] = src[2c + 1] for c < n (src readable up to 2n + 64
// elements): a padded row split into the two sub-planes of stride 2, 512 bits of it at a
// time, each pair of elements as one wider lane whose low / high half is kept.
template <class E>
IRNET_INLINE void deinterleave2(const E* src, E* dst0, E* dst1, int64_t n) {
  constexpr int64_t PP = 32 / sizeof(E);  // pairs per 512 bits
  for (int64_t c = 0; c < n; c += PP) {
    const __m512i v = _mm512_loadu_si512(src + 2 * c);
    __m256i e, o;
    if constexpr (sizeof(E) == 1) e = _mm512_cvtepi16_epi8(v), o = _mm512_cvtepi16_epi8(_mm512_srli_epi16(v, 8));
    if constexpr (sizeof(E) == 2) e = _mm512_cvtepi32_epi16(v), o = _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16));
    if constexpr (sizeof(E) == 4) e = _mm512_cvtepi64_epi32(v), o = _mm512_cvtepi64_epi32(_mm512_srli_epi64(v, 32));
    if constexpr (sizeof(E) == 8) {
      const __m512i t = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), v);
      e = _mm512_castsi512_si256(t), o = _mm512_extracti64x4_epi64(t, 1);
    }
    const int64_t bytes = (n - c < PP ? n - c : PP) * int64_t(sizeof(E));
    const __mmask32 k = bytes >= 32 ? ~__mmask32(0) : __mmask32((1u << bytes) - 1);
    _mm256_mask_storeu_epi8(dst0 + c, k, e);
    _mm256_mask_storeu_epi8(dst1 + c, k, o);
  }
}

// The same from channels_last float32 activations: a pixel's channels [c0, c1) are
// contiguous, so VCMPPS on them gives its element's bits directly as a mask register
// (16 channels each; the channels past c1 are not read and give 0).
template <int L>
void row_elements_float_cl(const ConvProblem& P, int64_t n, int64_t h, int64_t g, typename Lane<L>::elem* dst) {
  using E = typename Lane<L>::elem;
  const int64_t c0 = g * L, nc = (P.C < c0 + L ? P.C : c0 + L) - c0, C = P.C;
  const float* src = P.xf + (n * P.H + h) * P.W * C + c0;
  const __m512 zero = _mm512_setzero_ps();
  constexpr int kParts = L >= 16 ? L / 16 : 1;  // 16-channel compares per element
  __mmask16 k[kParts];
  for (int j = 0; j < kParts; ++j) k[j] = first_lanes(nc - 16 * j);
  for (int64_t w = 0; w < P.W; ++w, src += C) {
    uint64_t e = 0;
#pragma GCC unroll 4
    for (int j = 0; j < kParts; ++j)
      e |= uint64_t(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(k[j], src + 16 * j), zero, _CMP_LT_OQ)) << (16 * j);
    dst[w] = E(e);
  }
}

// Units u = (n*sh + a)*Hq + r: row r of the sub-planes (a, b), b < sw, of every group of
// image n; input row h = r*sh + a - ph (padded row r*sh + a), padded column c*sw + b.
// With stride 1 the row's elements go straight into the plane; otherwise into a padded
// row (zero outside the image) that is then split into the sw sub-planes.
template <int L>
void prep_planes_lanes(const ConvProblem& P, const PlanesLayout& Y, int64_t u0, int64_t u1, void* planes) {
  using E = typename Lane<L>::elem;
  const PlaneGeometry& G = Y.G;
  const int64_t sw = P.sw, Wq = G.Wq, gstride = G.S * G.plane;
  // (new[], not std::vector: no std:: template under this target)
  E* padded = sw > 1 ? new E[size_t(sw * Wq + 64)]() : nullptr;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t r = u % G.Hq, na = u / G.Hq;
    const int64_t a = na % P.sh, n = na / P.sh;
    E* img = static_cast<E*>(planes) + n * G.image + a * sw * G.plane + r * Wq;  // group 0, sub-plane (a, 0), row r
    const int64_t h = r * P.sh + a - P.ph;
    for (int64_t g = 0; g < G.groups; ++g) {
      E* gr = img + g * gstride;
      if (h < 0 || h >= P.H) {
        for (int64_t b = 0; b < sw; ++b)
          for (int64_t c = 0; c < Wq; ++c) gr[b * G.plane + c] = 0;
        continue;
      }
      E* row = (sw == 1 ? gr : padded) + P.pw;
      if (P.xf && P.xf_cl)
        row_elements_float_cl<L>(P, n, h, g, row);
      else if (P.xf)
        row_elements_float<L>(P, n, h, g, row);
      else
        row_elements_packed<L>(P, n, h, g, row);
      if (sw == 1) {
        for (int64_t c = 0; c < P.pw; ++c) gr[c] = 0;
        for (int64_t c = P.pw + P.W; c < Wq; ++c) gr[c] = 0;
      } else if (sw == 2) {
        deinterleave2(padded, gr, gr + G.plane, Wq);
      } else {
        for (int64_t b = 0; b < sw; ++b)
          for (int64_t c = 0; c < Wq; ++c) gr[b * G.plane + c] = padded[c * sw + b];
      }
    }
  }
  delete[] padded;
}

void prep_planes(const ConvProblem& P, const PlanesLayout& Y, int64_t u0, int64_t u1, void* planes) {
  switch (Y.lane_bits) {
    case 8: prep_planes_lanes<8>(P, Y, u0, u1, planes); break;
    case 16: prep_planes_lanes<16>(P, Y, u0, u1, planes); break;
    case 32: prep_planes_lanes<32>(P, Y, u0, u1, planes); break;
    default: prep_planes_lanes<64>(P, Y, u0, u1, planes); break;
  }
}

// The full register tile over 4 KiB planes (and an all-ones mask plane), at scattered
// step offsets, with the conv's epilogue arithmetic (y = float(2 * count - K_in) * s into
// an L1 buffer): the kernel minus the planes' preparation and the output's way to memory.
// (Plain arrays: no std:: template instantiated under this file's target pragma.)
template <int L>
int64_t peak_probe_lanes(int64_t steps, int64_t iters, uint64_t* sink) {
  using E = typename Lane<L>::elem;
  constexpr int V = 512 / L, NP = Lane<L>::kPieces, NV = tile_vectors(L);
  constexpr int64_t kElems = 4096 / sizeof(E), kSize = kElems + 64 + NV * V;
  E* x = new E[kSize];
  E* m = new E[kSize];
  int64_t* xoff = new int64_t[size_t(steps)];
  uint64_t* w = new uint64_t[size_t(OB * steps)];
  for (int64_t i = 0; i < kSize; ++i) x[i] = E(uint64_t(i) * 0x9E3779B97F4A7C15ULL >> 17), m[i] = E(~E(0));
  for (int64_t k = 0; k < steps; ++k) {
    xoff[k] = (k * 997) % kElems;
    for (int64_t o = 0; o < OB; ++o) w[k * OB + o] = uint64_t(k * 5 + o * 11) * 0xD1B54A32D192ED03ULL;
  }
  alignas(64) int32_t part[OB * NV * 64];
  alignas(64) float y[OB * NV * NP * 16];
  const int64_t chunk = max_steps(L) < steps ? max_steps(L) : steps;
  const __m512i kin = _mm512_set1_epi32(int32_t(steps * L));
  const __m512 one = _mm512_set1_ps(1.0f);
  const auto epi = [&](int o, int p, const __m512i* c) __attribute__((always_inline)) {
    for (int i = 0; i < NP; ++i) {
      const __m512i d = _mm512_add_epi32(_mm512_sub_epi32(c[i], kin), c[i]);
      _mm512_store_ps(y + ((o * NV + p) * NP + i) * 16, _mm512_mul_ps(_mm512_cvtepi32_ps(d), one));
    }
  };
  uint64_t s = 0;
  for (int64_t it = 0; it < iters; ++it) {
    const E* xp[NV];
    const E* mp[NV];
    for (int p = 0; p < NV; ++p) xp[p] = x + (it & 63) + p * V, mp[p] = m + p * V;
    tile<L, NV>(xp, mp, xoff, steps, 1, 0, chunk, w, part, epi);
    s += uint64_t(int64_t(y[it % (OB * NV * NP * 16)]));
  }
  *sink = s;
  delete[] x;
  delete[] m;
  delete[] xoff;
  delete[] w;
  return iters * steps * OB * NV * 512;
}

int64_t peak_probe(int lane_bits, int64_t steps, int64_t iters, uint64_t* sink) {
  switch (lane_bits) {
    case 8: return peak_probe_lanes<8>(steps, iters, sink);
    case 16: return peak_probe_lanes<16>(steps, iters, sink);
    case 32: return peak_probe_lanes<32>(steps, iters, sink);
    default: return peak_probe_lanes<64>(steps, iters, sink);
  }
}

const PlanesKernels kKernels = {&prep_planes, &conv_block, &scratch_bytes, &peak_probe};

}  // namespace planes_avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // IRNET_PLANES_X86

const PlanesKernels* planes_kernels() {
#if IRNET_PLANES_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq") &&
      __builtin_cpu_supports("avx512bitalg"))
    return &planes_avx512::kKernels;
#endif
  return nullptr;
}

}  // namespace cpu
}  // namespace irnet
