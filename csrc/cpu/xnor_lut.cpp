// irnet CPU: the table-lookup binary convolution (see xnor_lut.h for the maths and the
// layout).  The geometry and weight-offset helpers are portable; the kernels are
// compiled for AVX2 under a target pragma and handed out only where the CPU has it.
// Torch-free.
#include "cpu/xnor_lut.h"

#include <cstring>
#include <vector>

#include "core/bitpack.h"
#include "core/conv_geometry.h"
#include "cpu/avx2_transpose.h"
#include "cpu/fused_epilogue.h"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define IRNET_LUT_X86 1
#include <immintrin.h>
#else
#define IRNET_LUT_X86 0
#endif

namespace irnet {
namespace cpu {

namespace {
constexpr uint8_t kPadByte = 0x80;  // VPSHUFB reads 0 for an index with bit 7 set
// The table set: table (nb - 1) * 16 + w holds T[v] = popcount(~(v ^ w) & (2^nb - 1)) for
// a weight nibble w with nb valid channels; table 64 is all zeros (padding channels).
constexpr int kZeroTable = 64;
struct TableSet {
  alignas(64) uint8_t t[(kZeroTable + 1) * 16];
  TableSet() {
    for (int nb = 1; nb <= 4; ++nb)
      for (int w = 0; w < 16; ++w)
        for (int v = 0; v < 16; ++v)
          t[((nb - 1) * 16 + w) * 16 + v] = uint8_t(core::popcount64(uint64_t(~(v ^ w)) & ((1u << nb) - 1)));
    for (int v = 0; v < 16; ++v) t[kZeroTable * 16 + v] = 0;
  }
};
const TableSet kTables;

using core::ceil_div;
}  // namespace

PlaneGeometry plane_geometry(const ConvProblem& P, int64_t group_channels, int64_t vec, int64_t tile) {
  PlaneGeometry G;
  G.groups = ceil_div(P.C, group_channels);
  G.T = P.kh * P.kw;
  G.K = G.groups * G.T;
  G.Hq = ceil_div(P.H + 2 * P.ph, P.sh);
  G.Wq = ceil_div(P.W + 2 * P.pw, P.sw);
  G.S = P.sh * P.sw;
  G.plane = G.Hq * G.Wq;
  G.image = G.groups * G.S * G.plane;
  G.Qn = (P.Ho - 1) * G.Wq + P.Wo;
  G.Qk = G.Qn + vec;
  // A tile starting at q < Qn reads up to q + tile elements past its step's offset, and
  // the last step's offset ends within one row of the last sub-plane's end.
  G.total = P.N * G.image + 2 * G.Wq + 2 * tile + 64;
  return G;
}

void plane_offsets(const ConvProblem& P, const PlaneGeometry& G, int64_t* xoff) {
  for (int64_t g = 0; g < G.groups; ++g)
    for (int64_t i = 0; i < P.kh; ++i)
      for (int64_t j = 0; j < P.kw; ++j) {
        const int64_t y = i * P.dh, x = j * P.dw;
        const int64_t s = (y % P.sh) * P.sw + x % P.sw;
        xoff[g * G.T + i * P.kw + j] = (g * G.S + s) * G.plane + (y / P.sh) * G.Wq + x / P.sw;
      }
}

void plane_kin(const ConvProblem& P, const PlaneGeometry& G, int32_t* kin) {
  std::vector<int32_t> nw(static_cast<size_t>(P.Wo));
  for (int64_t j = 0; j < P.Wo; ++j) {
    const core::TapRange t = core::tap_range(j, P.kw, P.sw, P.pw, P.dw, P.W);
    nw[j] = int32_t(t.t1 - t.t0);
  }
  std::memset(kin, 0, sizeof(int32_t) * size_t(G.Qk));
  for (int64_t i = 0; i < P.Ho; ++i) {
    const core::TapRange t = core::tap_range(i, P.kh, P.sh, P.ph, P.dh, P.H);
    const int32_t rowk = int32_t(P.C * (t.t1 - t.t0));
    for (int64_t j = 0; j < P.Wo; ++j) kin[i * G.Wq + j] = rowk * nw[j];
  }
}

void lut_weight_offsets(const uint64_t* w, const ConvProblem& P, const LutGeometry& G, int64_t o0, int64_t o1,
                        uint16_t* wofs) {
  for (int64_t o = o0; o < o1; ++o) {
    uint16_t* row = wofs + o * G.K;
    for (int64_t c4 = 0; c4 < G.groups; ++c4) {
      const int64_t nb = P.C - 4 * c4 < 4 ? P.C - 4 * c4 : 4;
      for (int64_t t = 0; t < G.T; ++t) {
        int table = kZeroTable;
        if (o < P.O) {
          const uint64_t word = w[(o * G.T + t) * P.words + (c4 >> 4)];
          table = int((nb - 1) * 16 + ((word >> ((c4 & 15) * 4)) & 15));
        }
        row[c4 * G.T + t] = uint16_t(table * 16);
      }
    }
  }
}

#if IRNET_LUT_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
namespace lut_avx2 {

constexpr int PV = 4;        // 32-position index vectors per tile
constexpr int OT = 2;        // output channels per tile
constexpr int QV = 32 * PV;  // positions per tile
constexpr int64_t CHUNK = 63;  // byte counts: 63 steps x at most 4 matches < 256

// acc += VPSHUFB(table, idx) (bytewise), in inline assembly: written with intrinsics, GCC 12
// gives each lookup its own destination register and copies it back, which with 8
// accumulators runs out of registers and keeps one accumulator in memory (a
// store-to-load chain through every step: measured 2x slower).
IRNET_INLINE void lookup_add(__m256i& acc, __m256i table, __m256i idx) {
  __m256i tmp;
  asm("vpshufb %[idx], %[table], %[tmp]\n\tvpaddb %[tmp], %[acc], %[acc]"
      : [acc] "+x"(acc), [tmp] "=&x"(tmp)
      : [table] "x"(table), [idx] "x"(idx));
}

// Register tile: matches of 32*NV consecutive grid positions (index bytes x[xoff[k] + i],
// i < 32*NV) with OT output channels (table offsets w[o*K + k]) over the K steps, as
// uint16 cnt[o*QV + i] (a dot has at most 4 matches per step and K <= kMaxLutSteps).
// Byte counts for up to CHUNK steps at a time, then widened and added into cnt (through
// memory: the accumulators and tables fill the 16 registers).  Widening: VPERMQ puts
// bytes 0-7, 16-23 | 8-15, 24-31 in the 128-bit halves, so that unpacking against zero
// gives positions 0-15 (low bytes) and 16-31 (high bytes) as 16-bit lanes, in order.
// (The int32 counts this replaced, widened by four VPMOVZXBD per accumulator, ran the
// standalone tile at 441 against 509 GMAC/s on one core for 144-step dots, min of 300
// rounds; in the 64@56 layer, batch 1 and 16, 3% of the call in paired in-process rounds.)
template <int NV>
IRNET_INLINE void tile(const uint8_t* x, const int64_t* xoff, const uint16_t* w, int64_t K, uint16_t* cnt) {
  const uint8_t* tables = kTables.t;
  for (int64_t k0 = 0; k0 < K; k0 += CHUNK) {
    const int64_t k1 = k0 + CHUNK < K ? k0 + CHUNK : K;
    __m256i acc[NV][OT];
#pragma GCC unroll 8
    for (int p = 0; p < NV; ++p)
#pragma GCC unroll 8
      for (int o = 0; o < OT; ++o) acc[p][o] = _mm256_setzero_si256();
    for (int64_t k = k0; k < k1; ++k) {
      __m256i t[OT];
#pragma GCC unroll 8
      for (int o = 0; o < OT; ++o)
        t[o] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(tables + w[o * K + k])));
      const uint8_t* xk = x + xoff[k];
#pragma GCC unroll 8
      for (int p = 0; p < NV; ++p) {
        const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xk + 32 * p));
#pragma GCC unroll 8
        for (int o = 0; o < OT; ++o) lookup_add(acc[p][o], t[o], idx);
      }
    }
    const __m256i zero = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int p = 0; p < NV; ++p)
#pragma GCC unroll 8
      for (int o = 0; o < OT; ++o) {
        const __m256i a = _mm256_permute4x64_epi64(acc[p][o], 0xD8);
        const __m256i q[2] = {_mm256_unpacklo_epi8(a, zero), _mm256_unpackhi_epi8(a, zero)};
        __m256i* c = reinterpret_cast<__m256i*>(cnt + o * QV + 32 * p);
#pragma GCC unroll 2
        for (int v = 0; v < 2; ++v)
          _mm256_storeu_si256(c + v, k0 == 0 ? q[v] : _mm256_add_epi16(_mm256_loadu_si256(c + v), q[v]));
      }
  }
}

// dst[j] = float(2 * c[j] - kin[j]) * s, j < n: the dot (matches - mismatches) of n
// consecutive grid positions, scaled; 8 at a time.
IRNET_INLINE void counts_to_float(const uint16_t* c, const int32_t* kin, float s, float* dst, int64_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i m = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + j)));
    const __m256i d = _mm256_sub_epi32(_mm256_add_epi32(m, m), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kin + j)));
    _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_cvtepi32_ps(d), sv));
  }
  for (; j < n; ++j) dst[j] = float(2 * int32_t(c[j]) - kin[j]) * s;
}

// The tile for the last nv <= PV vectors of an image's grid: no work past its end.
template <int NV>
IRNET_INLINE void tile_vectors(int nv, const uint8_t* x, const int64_t* xoff, const uint16_t* w, int64_t K,
                               uint16_t* cnt) {
  if (nv == NV) {
    tile<NV>(x, xoff, w, K, cnt);
  } else if constexpr (NV > 1) {
    tile_vectors<NV - 1>(nv, x, xoff, w, K, cnt);
  }
}

// A run of output columns of one output row inside a tile: tile positions [i0, i0 + len)
// are columns [wo, wo + len) of row ho.
struct Segment {
  int64_t i0, len, ho, wo;
};

// The segments of grid positions [qt, qe) that are real output columns (wo < Wo).
IRNET_INLINE int64_t grid_segments(int64_t qt, int64_t qe, int64_t Wq, int64_t Wo, Segment* seg) {
  int64_t nseg = 0;
  for (int64_t ho = qt / Wq, q = qt; q < qe; ++ho, q = ho * Wq) {
    const int64_t wa = q - ho * Wq, wb = qe - ho * Wq < Wo ? qe - ho * Wq : Wo;
    if (wa < wb) seg[nseg++] = Segment{q - qt, wb - wa, ho, wa};
  }
  return nseg;
}

// scratch: cnt [OT][QV] uint16, segments [QV + 1], y [channels][QV] float (channels_last)
int64_t scratch_bytes(int64_t channels) {
  return int64_t(sizeof(uint16_t)) * OT * QV + int64_t(sizeof(float)) * channels * QV +
         int64_t(sizeof(Segment)) * (QV + 1) + 64;
}

// In place: r[j] (column j of the 16 x 16 bytes r[i][j]) = old row bytes r[0..16)[j].
// Four rounds of unpacks, pairing 1-, 2-, 4-, then 8-byte elements; after the round of
// 2^s-byte elements every vector holds, per column, a block of 2^(s+1) consecutive rows.
IRNET_INLINE void transpose16x16(__m128i r[16]) {
  __m128i t[16];
  for (int p = 0; p < 8; ++p) {  // t[p]: 16-bit e = rows 2p, 2p+1 of column e; t[p+8]: column 8+e
    t[p] = _mm_unpacklo_epi8(r[2 * p], r[2 * p + 1]);
    t[p + 8] = _mm_unpackhi_epi8(r[2 * p], r[2 * p + 1]);
  }
  for (int c = 0; c < 16; c += 8)
    for (int q = 0; q < 4; ++q) {  // r[c+q]: 32-bit e = rows 4q..4q+3 of column c+e; r[c+q+4]: column c+4+e
      r[c + q] = _mm_unpacklo_epi16(t[c + 2 * q], t[c + 2 * q + 1]);
      r[c + q + 4] = _mm_unpackhi_epi16(t[c + 2 * q], t[c + 2 * q + 1]);
    }
  for (int g = 0; g < 16; g += 4)
    for (int h = 0; h < 2; ++h) {  // t[g+h]: 64-bit e = rows 8h..8h+7 of column g+e; t[g+h+2]: column g+2+e
      t[g + h] = _mm_unpacklo_epi32(r[g + 2 * h], r[g + 2 * h + 1]);
      t[g + h + 2] = _mm_unpackhi_epi32(r[g + 2 * h], r[g + 2 * h + 1]);
    }
  for (int g = 0; g < 16; g += 4) {
    r[g] = _mm_unpacklo_epi64(t[g], t[g + 1]);
    r[g + 1] = _mm_unpackhi_epi64(t[g], t[g + 1]);
    r[g + 2] = _mm_unpacklo_epi64(t[g + 2], t[g + 3]);
    r[g + 3] = _mm_unpackhi_epi64(t[g + 2], t[g + 3]);
  }
}

void prep_planes(const ConvProblem& P, const LutGeometry& G, int64_t u0, int64_t u1, uint8_t* planes) {
  const int64_t words = P.words, sw = P.sw, C4 = G.groups, cstride = G.S * G.plane;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t r = u % G.Hq, na = u / G.Hq;
    const int64_t a = na % P.sh, n = na / P.sh;
    uint8_t* img = planes + n * G.image + a * sw * G.plane + r * G.Wq;  // sub-plane (a, 0), row r
    for (int64_t c4 = 0; c4 < C4; ++c4)
      for (int64_t b = 0; b < sw; ++b) std::memset(img + c4 * cstride + b * G.plane, kPadByte, size_t(G.Wq));
    const int64_t h = r * P.sh + a - P.ph;
    if (h < 0 || h >= P.H) continue;
    const uint64_t* px = P.x + (n * P.H + h) * P.W * words;
    int64_t wi = 0;
    if (sw <= 2) {
      // 16 pixels at a time: each word as its 16 nibbles, one per byte (low, high nibble
      // of byte 0, then of byte 1, ...), transposed to 16 bytes per nibble plane; with
      // stride 2 the even and odd pixels go to two sub-planes, 8 bytes each
      const __m128i deinterleave = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
      for (; wi + 16 <= P.W; wi += 16) {
        const int64_t xp = P.pw + wi;  // padded column of the first pixel
        for (int64_t wd = 0; wd * 16 < C4; ++wd) {
          __m128i m[16];
          for (int i = 0; i < 16; ++i) {
            const __m128i v = _mm_cvtsi64_si128(static_cast<long long>(px[(wi + i) * words + wd]));
            m[i] = _mm_unpacklo_epi8(_mm_and_si128(v, low4), _mm_and_si128(_mm_srli_epi16(v, 4), low4));
          }
          transpose16x16(m);
          uint8_t* dst = img + (wd * 16) * cstride;
          const int64_t nj = C4 - wd * 16 < 16 ? C4 - wd * 16 : 16;
          for (int64_t j = 0; j < nj; ++j, dst += cstride) {
            if (sw == 1) {
              _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + xp), m[j]);
            } else {
              const __m128i v = _mm_shuffle_epi8(m[j], deinterleave);
              _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + (xp % 2) * G.plane + xp / 2), v);
              _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + ((xp + 1) % 2) * G.plane + (xp + 1) / 2),
                               _mm_srli_si128(v, 8));
            }
          }
        }
      }
    }
    // the rest (and strided columns) one pixel at a time: padded column pw + wi is
    // column c of sub-plane b, stepped rather than divided
    int64_t b = (P.pw + wi) % sw, c = (P.pw + wi) / sw;
    for (; wi < P.W; ++wi) {
      uint8_t* dst = img + b * G.plane + c;
      const uint64_t* pw_ = px + wi * words;
      for (int64_t c4 = 0; c4 < C4; ++c4) dst[c4 * cstride] = uint8_t((pw_[c4 >> 4] >> ((c4 & 15) * 4)) & 15);
      if (++b == sw) b = 0, ++c;
    }
  }
}

// Asks for the cache lines a tile's NCHW results go to (channels [o0, o1), the grid
// segments seg) before the tile runs, so that their fetch from memory overlaps the
// lookups rather than stalling the stores that follow.  A big layer's output does not
// stay in cache between calls (64@56 at batch 16: 12.8 MB); there this was 3.5% faster
// (median of 60 paired in-process rounds, 2-core Zen 3 VM), and neutral on
// cache-resident outputs (64@56 batch 1, 16@32 batch 16).
IRNET_INLINE void prefetch_outputs(const ConvProblem& P, int64_t n, int64_t o0, int64_t o1, const Segment* seg,
                                   int64_t nseg) {
  for (int64_t o = o0; o < o1; ++o)
    for (int64_t g = 0; g < nseg; ++g) {
      const float* dst = P.out + ((n * P.O + o) * P.Ho + seg[g].ho) * P.Wo + seg[g].wo;
      for (int64_t j = 0; j < seg[g].len; j += 16) _mm_prefetch(reinterpret_cast<const char*>(dst + j), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(dst + seg[g].len - 1), _MM_HINT_T0);
    }
}

// NCHW output: output channels (in pairs) outer, positions inner: each channel's
// outputs of [q0, q1) are written (and, fused, its residual read) as one sequential run,
// rather than a 128-position slice of every channel per tile.  Measured neutral against
// the tile-outer order on the 2-core Zen 3 (alternating-process A/B: 64@56 at batch 1 and
// 16, 16@32 at batch 16, the fused ResNet-20 at batch 128), though the stores cost 15-28%
// of the 64@56 batch-16 layer (measured by redirecting them; streaming stores were
// slower still).  channels_last output: positions outer, every channel of a tile staged
// in y and transposed 8 x 8 into the pixels.
void conv_block(const LutProblem& L, int64_t n, int64_t q0, int64_t q1, int64_t o0, int64_t o1, void* scratch) {
  const ConvProblem& P = *L.P;
  const LutGeometry& G = L.G;
  const int64_t K = G.K, Wq = G.Wq, Wo = P.Wo, Ho = P.Ho, O = P.O;
  const int64_t nch = o1 - o0;
  auto* base = reinterpret_cast<unsigned char*>(scratch);
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  uint16_t* cnt = reinterpret_cast<uint16_t*>(base);
  Segment* seg = reinterpret_cast<Segment*>(cnt + OT * QV);
  float* ybuf = reinterpret_cast<float*>(seg + QV + 1);
  const uint8_t* x = L.planes + n * G.image;
  // index vectors that cover the valid grid positions [qt, qe)
  auto vectors = [](int64_t qt, int64_t qe) { return int((qe - qt + 31) / 32); };
  if (!P.out_cl) {
    for (int64_t ot = o0; ot < o1; ot += OT)
      for (int64_t qt = q0; qt < q1; qt += QV) {
        const int64_t qe = qt + QV < q1 ? qt + QV : q1;
        const int64_t nseg = grid_segments(qt, qe, Wq, Wo, seg);
        prefetch_outputs(P, n, ot, ot + OT < o1 ? ot + OT : o1, seg, nseg);
        tile_vectors<PV>(vectors(qt, qe), x + qt, L.xoff, L.wofs + ot * K, K, cnt);
        const int32_t* kin = L.kin + qt;
        for (int64_t o = ot; o < ot + OT && o < o1; ++o) {
          const float s = L.scale[o];
          const uint16_t* c = cnt + (o - ot) * QV;
          for (int64_t g = 0; g < nseg; ++g) {  // each segment is a contiguous run of a plane
            const Segment& S = seg[g];
            const int64_t at = ((n * O + o) * Ho + S.ho) * Wo + S.wo;
            float* dst = P.out + at;
            counts_to_float(c + S.i0, kin + S.i0, s, dst, S.len);
            if (P.alpha) fused_run(dst, P.residual ? P.residual + at : nullptr, S.len, P.alpha[o], P.beta[o], P.lo, P.hi);
          }
        }
      }
    return;
  }
  for (int64_t qt = q0; qt < q1; qt += QV) {
    const int64_t qe = qt + QV < q1 ? qt + QV : q1;
    const int nv = vectors(qt, qe);
    const int32_t* kin = L.kin + qt;
    for (int64_t ot = o0; ot < o1; ot += OT) {
      tile_vectors<PV>(nv, x + qt, L.xoff, L.wofs + ot * K, K, cnt);
      for (int64_t o = ot; o < ot + OT && o < o1; ++o) {
        const float s = L.scale[o];
        counts_to_float(cnt + (o - ot) * QV, kin, s, ybuf + (o - o0) * QV, 32 * nv);
      }
    }
    // a pixel's channels [o0, o1) are contiguous; 8 pixels x 8 channels of ybuf at a
    // time are transposed in registers, the rest copied one by one
    const int64_t nseg = grid_segments(qt, qe, Wq, Wo, seg);
    for (int64_t g = 0; g < nseg; ++g) {
      const Segment& S = seg[g];
      float* row = P.out + ((n * Ho + S.ho) * Wo + S.wo) * O + o0;  // the segment's first pixel
      int64_t j = 0;
      for (; j + 8 <= S.len; j += 8) {
        int64_t c = 0;
        for (; c + 8 <= nch; c += 8) transpose8x8_store(ybuf + c * QV + S.i0 + j, QV, row + j * O + c, O);
        for (int64_t p = 0; p < 8; ++p)
          for (int64_t cc = c; cc < nch; ++cc) row[(j + p) * O + cc] = ybuf[cc * QV + S.i0 + j + p];
      }
      for (; j < S.len; ++j)
        for (int64_t c = 0; c < nch; ++c) row[j * O + c] = ybuf[c * QV + S.i0 + j];
      if (P.alpha) {
        for (j = 0; j < S.len; ++j) {
          const int64_t at = ((n * Ho + S.ho) * Wo + S.wo + j) * O + o0;
          fused_channels(P.out + at, P.residual ? P.residual + at : nullptr, nch, P.alpha + o0, P.beta + o0, P.lo,
                         P.hi);
        }
      }
    }
  }
}

// The full register tile (PV vectors x OT channels) over a 4 KiB plane buffer, at
// scattered step offsets, as in the kernel minus the planes' preparation and the output.
int64_t peak_probe(int64_t steps, int64_t iters, uint64_t* sink) {
  // steps read QV bytes from (it & 63) + xoff[k], xoff[k] < kBytes
  constexpr int64_t kBytes = 4096, kSize = kBytes + 64 + QV;
  alignas(64) uint8_t planes[kSize];
  for (int64_t i = 0; i < kSize; ++i) planes[i] = uint8_t((i * 7 + (i >> 5)) & 15);
  std::vector<int64_t> xoff(static_cast<size_t>(steps));
  std::vector<uint16_t> w(static_cast<size_t>(OT * steps));
  for (int64_t k = 0; k < steps; ++k) {
    xoff[k] = (k * 997) % kBytes;
    for (int64_t o = 0; o < OT; ++o) w[o * steps + k] = uint16_t(((k * 5 + o * 11) % kZeroTable) * 16);
  }
  alignas(64) uint16_t cnt[OT * QV];
  uint64_t s = 0;
  for (int64_t it = 0; it < iters; ++it) {
    tile<PV>(planes + (it & 63), xoff.data(), w.data(), steps, cnt);
    s += uint64_t(cnt[it % (OT * QV)]);
  }
  *sink = s;
  return iters * steps * PV * OT * 128;
}

const LutKernels kKernels = {OT, QV, &prep_planes, &conv_block, &scratch_bytes, &peak_probe};

}  // namespace lut_avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // IRNET_LUT_X86

const LutKernels* lut_kernels() {
#if IRNET_LUT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) return &lut_avx2::kKernels;
#endif
  return nullptr;
}

}  // namespace cpu
}  // namespace irnet
