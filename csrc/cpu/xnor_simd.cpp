// irnet CPU: instantiates the XNOR-popcount kernel body (xnor_level_impl.inc) once
// per SIMD level, each under its own target pragma (setup.py passes no -m flags:
// the baseline build stays portable and the CPU is asked at run time), and the
// table that picks a level.  Torch-free.
#include "cpu/xnor_simd.h"

#include <cstring>

#include "core/bitpack.h"
#include "core/conv_geometry.h"
#include "cpu/avx2_transpose.h"
#include "cpu/fused_epilogue.h"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define IRNET_X86 1
#include <immintrin.h>
#else
#define IRNET_X86 0
#endif

namespace irnet {
namespace cpu {

// ============================================================================ scalar
// One 64-bit word per lane; __builtin_popcountll is the POPCNT instruction under
// target("popcnt") and libgcc's portable count in the "generic" build.
#define IRNET_SCALAR_OPS                                                                  \
  struct Ops {                                                                            \
    using vec = uint64_t;                                                                 \
    using acc = uint64_t;                                                                 \
    static constexpr int LANES = 1, V = 4, MR = 2, SPLIT = 1;                             \
    static IRNET_INLINE void split(uint64_t w, uint64_t* out) { out[0] = w; }             \
    static constexpr int64_t CHUNK = int64_t(1) << 40;                                    \
    static IRNET_INLINE vec load(const uint64_t* p) { return *p; }                        \
    static IRNET_INLINE vec bcast(const uint64_t* p) { return *p; }                       \
    static IRNET_INLINE vec vxor(vec a, vec b) { return a ^ b; }                          \
    static IRNET_INLINE acc zero() { return 0; }                                          \
    static IRNET_INLINE acc add_pop(acc s, vec v) { return s + uint64_t(__builtin_popcountll(v)); } \
    static IRNET_INLINE void flush(acc s, int64_t* out, bool first) { out[0] = (first ? 0 : out[0]) + int64_t(s); }         \
    /* NR int32 lanes: the counts of a tile row, and the epilogue's per-channel bias */   \
    struct ivec {                                                                         \
      int32_t v[V * LANES];                                                               \
    };                                                                                    \
    static IRNET_INLINE ivec counts(const acc* a, const int64_t* prev) {                  \
      ivec c;                                                                             \
      for (int q = 0; q < V * LANES; ++q) c.v[q] = int32_t(int64_t(a[q]) + (prev ? prev[q] : 0)); \
      return c;                                                                           \
    }                                                                                     \
    static IRNET_INLINE ivec iset1(int32_t v) {                                           \
      ivec c;                                                                             \
      for (int q = 0; q < V * LANES; ++q) c.v[q] = v;                                     \
      return c;                                                                           \
    }                                                                                     \
    static IRNET_INLINE ivec iload(const int32_t* p) {                                    \
      ivec c;                                                                             \
      for (int q = 0; q < V * LANES; ++q) c.v[q] = p[q];                                  \
      return c;                                                                           \
    }                                                                                     \
    static IRNET_INLINE ivec iadd(ivec a, ivec b) {                                       \
      for (int q = 0; q < V * LANES; ++q) a.v[q] += b.v[q];                               \
      return a;                                                                           \
    }                                                                                     \
    static IRNET_INLINE ivec isub(ivec a, ivec b) {                                       \
      for (int q = 0; q < V * LANES; ++q) a.v[q] -= b.v[q];                               \
      return a;                                                                           \
    }                                                                                     \
    /* y[q] = float(bias[q] - 2*cnt[q]) * sc[q], q < NR (the epilogue, see conv_block) */ \
    static IRNET_INLINE void finish(ivec cnt, ivec bias, const float* sc, float* y) {     \
      for (int q = 0; q < V * LANES; ++q) y[q] = float(bias.v[q] - 2 * cnt.v[q]) * sc[q]; \
    }                                                                                     \
    /* out[q*stride + p] = y[p*NR + q], p < 8, q < NR (NR = V*LANES = 4) */               \
    static IRNET_INLINE void store_cols(const float* y, float* out, int64_t stride) {     \
      for (int q = 0; q < V * LANES; ++q)                                                 \
        for (int p = 0; p < 8; ++p) out[q * stride + p] = y[p * V * LANES + q];           \
    }                                                                                     \
    static constexpr bool PACK64 = false; /* pack_block_f32 uses neg_mask + transpose */  \
    static void pack64(const float*, int64_t, int64_t, uint64_t*) {}                      \
    static constexpr int BF32 = 1, BF64 = 1, BF16 = 1, BBF16 = 1;                         \
    static uint64_t neg_f32(const float*) { return 0; }                                   \
    static uint64_t neg_f64(const double*) { return 0; }                                  \
    static uint64_t neg_f16(const uint16_t*) { return 0; }                                \
    static uint64_t neg_bf16(const uint16_t*) { return 0; }                               \
  };

namespace generic {
constexpr const char* kLevelName = "scalar";
IRNET_SCALAR_OPS
#include "cpu/xnor_level_impl.inc"
}  // namespace generic

#if IRNET_X86
// ---------------------------------------------------------------- scalar + POPCNT
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("popcnt")
#endif
namespace scalar {
constexpr const char* kLevelName = "scalar";
IRNET_SCALAR_OPS
#include "cpu/xnor_level_impl.inc"
}  // namespace scalar
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ============================================================================ AVX2
// Popcount of 64-bit lanes without a popcount instruction (W. Mula's method): split
// every byte into its two nibbles, look both up in a 16-entry table of bit counts with
// VPSHUFB, add: per byte a count <= 8.  Byte counts accumulate for up to 31 steps
// (31 * 8 = 248 < 256) and VPSADBW against zero then sums the 8 bytes of each 64-bit
// lane, which is exactly the per-lane (= per output channel) popcount.
// The nibble split commutes with XOR: lo(x ^ w) = lo(x) ^ lo(w), hi likewise, with
// lo(v) = v & 0x0F.., hi(v) = (v >> 4) & 0x0F...  So both operands are stored split
// (weights once per call, activations when the patch rows are built) and the inner
// loop does 2 XOR + 2 VPSHUFB + 2 ADD per 4 words instead of XOR + AND + SHIFT + AND +
// 2 VPSHUFB + 2 ADD: 6 vector ops instead of 8, for twice the (L1-resident) loads.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,popcnt,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,popcnt,f16c")
#endif
namespace avx2 {
constexpr const char* kLevelName = "avx2";
struct Ops {
  struct vec {
    __m256i lo, hi;  // nibble halves of 4 words
  };
  using acc = __m256i;
  static constexpr int LANES = 4, V = 2, MR = 3, SPLIT = 2;
  static constexpr int NR_ = LANES * V;
  static constexpr int64_t CHUNK = 31;
  static IRNET_INLINE void split(uint64_t w, uint64_t* out) {
    out[0] = w & 0x0F0F0F0F0F0F0F0FULL;
    out[1] = (w >> 4) & 0x0F0F0F0F0F0F0F0FULL;
  }
  // panel layout [k][2][NR]: the low halves of the NR channels, then the high halves
  static IRNET_INLINE vec load(const uint64_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + NR_))};
  }
  static IRNET_INLINE vec bcast(const uint64_t* p) {
    return {_mm256_set1_epi64x(static_cast<long long>(p[0])), _mm256_set1_epi64x(static_cast<long long>(p[1]))};
  }
  static IRNET_INLINE vec vxor(vec a, vec b) { return {_mm256_xor_si256(a.lo, b.lo), _mm256_xor_si256(a.hi, b.hi)}; }
  static IRNET_INLINE acc zero() { return _mm256_setzero_si256(); }
  static IRNET_INLINE acc add_pop(acc s, vec v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    return _mm256_add_epi8(s, _mm256_add_epi8(_mm256_shuffle_epi8(lut, v.lo), _mm256_shuffle_epi8(lut, v.hi)));
  }
  static IRNET_INLINE void flush(acc s, int64_t* out, bool first) {
    __m256i q = _mm256_sad_epu8(s, _mm256_setzero_si256());
    if (!first) q = _mm256_add_epi64(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), q);
  }
  // (cpu/avx2_transpose.h)
  static IRNET_INLINE void store_cols(const float* y, float* out, int64_t stride) { transpose8x8_store(y, NR_, out, stride); }
  // The 8 counts of a tile row, in registers: VPSADBW sums each 64-bit lane's bytes
  // (plus the earlier chunks' int64 counts, if any); the counts (< 2^31) are the low
  // dwords, gathered by SHUFPS (channels 0 1 4 5 | 2 3 6 7) and VPERMQ (0..7).
  using ivec = __m256i;
  static IRNET_INLINE ivec counts(const acc* a, const int64_t* prev) {
    __m256i q0 = _mm256_sad_epu8(a[0], _mm256_setzero_si256());
    __m256i q1 = _mm256_sad_epu8(a[1], _mm256_setzero_si256());
    if (prev) {
      q0 = _mm256_add_epi64(q0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(prev)));
      q1 = _mm256_add_epi64(q1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(prev + 4)));
    }
    const __m256 lo = _mm256_shuffle_ps(_mm256_castsi256_ps(q0), _mm256_castsi256_ps(q1), 0x88);
    return _mm256_permute4x64_epi64(_mm256_castps_si256(lo), 0xD8);
  }
  static IRNET_INLINE ivec iset1(int32_t v) { return _mm256_set1_epi32(v); }
  static IRNET_INLINE ivec iload(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static IRNET_INLINE ivec iadd(ivec a, ivec b) { return _mm256_add_epi32(a, b); }
  static IRNET_INLINE ivec isub(ivec a, ivec b) { return _mm256_sub_epi32(a, b); }
  // y[q] = float(bias[q] - 2*cnt[q]) * sc[q] for the 8 lanes
  static IRNET_INLINE void finish(ivec cnt, ivec bias, const float* sc, float* y) {
    const __m256i d = _mm256_sub_epi32(bias, _mm256_add_epi32(cnt, cnt));
    _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_loadu_ps(sc)));
  }
  // NCHW float32 to channels-innermost words, 64 pixels x up to 64 channels: each channel
  // row is read once, 64 floats (4 cache lines) in order, as eight 8-float loads; VCMPPS
  // (x < 0: false for -0.0 and NaN) gives a -1 mask per negative value, and
  //   acc = (acc >> 1) | (mask << 31)
  // shifts each channel's bit in from the top of its pixel lane's int32, channels in
  // ascending order, 32 per half; a half of cnt < 32 channels is shifted down by 32 - cnt
  // at the end, so channel c lands on bit c (low half) or c - 32 (high half).  Each pixel's
  // word is then lo | hi << 32.
  static constexpr bool PACK64 = true;
  static IRNET_INLINE void pack_half(const float* src, int64_t P, int64_t c0, int64_t c1, __m256i* acc) {
    for (int v = 0; v < 8; ++v) acc[v] = _mm256_setzero_si256();
    for (int64_t c = c0; c < c1; ++c) {
      const float* row = src + c * P;
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) {
        const __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(row + 8 * v), _mm256_setzero_ps(), _CMP_LT_OQ));
        acc[v] = _mm256_or_si256(_mm256_srli_epi32(acc[v], 1), _mm256_slli_epi32(neg, 31));
      }
    }
    const __m128i down = _mm_cvtsi32_si128(int(32 - (c1 - c0)));
    for (int v = 0; v < 8; ++v) acc[v] = _mm256_srl_epi32(acc[v], down);
  }
  static void pack64(const float* src, int64_t P, int64_t nc, uint64_t* out) {  // out: 32-byte aligned
    alignas(32) uint32_t lo[64];
    __m256i acc[8];
    pack_half(src, P, 0, nc < 32 ? nc : 32, acc);
    for (int v = 0; v < 8; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(lo + 8 * v), acc[v]);
    pack_half(src, P, 32, nc > 32 ? nc : 32, acc);
    for (int v = 0; v < 8; ++v) {
      const __m256i l = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo + 8 * v));
      const __m256i a = _mm256_unpacklo_epi32(l, acc[v]);  // pixels 0 1 | 4 5 of this group of 8
      const __m256i b = _mm256_unpackhi_epi32(l, acc[v]);  // pixels 2 3 | 6 7
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8 * v), _mm256_permute2x128_si256(a, b, 0x20));
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8 * v + 4), _mm256_permute2x128_si256(a, b, 0x31));
    }
  }
  // Sign masks: VCMPPS with _CMP_LT_OQ is false for -0.0 and NaN, like `x < 0`.
  static constexpr int BF32 = 8, BF64 = 4, BF16 = 8, BBF16 = 8;
  static uint64_t neg_f32(const float* p) {
    return uint64_t(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), _CMP_LT_OQ)));
  }
  static uint64_t neg_f64(const double* p) {
    return uint64_t(_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(p), _mm256_setzero_pd(), _CMP_LT_OQ)));
  }
  static uint64_t neg_f16(const uint16_t* p) {
    const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return uint64_t(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ)));
  }
  static uint64_t neg_bf16(const uint16_t* p) {
    // bfloat16 is the high half of a float32
    const __m256i i = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
    return uint64_t(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_castsi256_ps(i), _mm256_setzero_ps(), _CMP_LT_OQ)));
  }
};
#include "cpu/xnor_level_impl.inc"
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ============================================================================ AVX-512
// VPOPCNTQ counts each 64-bit lane directly; 64-bit accumulators never overflow.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vpopcntdq,popcnt,f16c")
// GCC 12's own avx512 intrinsic headers trip -Wmaybe-uninitialized (_mm512_undefined_*)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace avx512 {
constexpr const char* kLevelName = "avx512";
struct Ops {
  using vec = __m512i;
  using acc = __m512i;
  static constexpr int LANES = 8, V = 2, MR = 4, SPLIT = 1;
  static IRNET_INLINE void split(uint64_t w, uint64_t* out) { out[0] = w; }
  static constexpr int64_t CHUNK = int64_t(1) << 40;
  static IRNET_INLINE vec load(const uint64_t* p) { return _mm512_loadu_si512(p); }
  static IRNET_INLINE vec bcast(const uint64_t* p) { return _mm512_set1_epi64(static_cast<long long>(*p)); }
  static IRNET_INLINE vec vxor(vec a, vec b) { return _mm512_xor_si512(a, b); }
  static IRNET_INLINE acc zero() { return _mm512_setzero_si512(); }
  static IRNET_INLINE acc add_pop(acc s, vec v) { return _mm512_add_epi64(s, _mm512_popcnt_epi64(v)); }
  static IRNET_INLINE void flush(acc s, int64_t* out, bool first) {
    if (!first) s = _mm512_add_epi64(s, _mm512_loadu_si512(out));
    _mm512_storeu_si512(out, s);
  }
  // the 16 counts of a tile row: the int64 lanes (< 2^31) narrowed by VPMOVQD
  using ivec = __m512i;
  static IRNET_INLINE ivec counts(const acc* a, const int64_t* prev) {
    __m512i q0 = a[0], q1 = a[1];
    if (prev) {
      q0 = _mm512_add_epi64(q0, _mm512_loadu_si512(prev));
      q1 = _mm512_add_epi64(q1, _mm512_loadu_si512(prev + 8));
    }
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(q0)), _mm512_cvtepi64_epi32(q1), 1);
  }
  static IRNET_INLINE ivec iset1(int32_t v) { return _mm512_set1_epi32(v); }
  static IRNET_INLINE ivec iload(const int32_t* p) { return _mm512_loadu_si512(p); }
  static IRNET_INLINE ivec iadd(ivec a, ivec b) { return _mm512_add_epi32(a, b); }
  static IRNET_INLINE ivec isub(ivec a, ivec b) { return _mm512_sub_epi32(a, b); }
  static IRNET_INLINE void finish(ivec cnt, ivec bias, const float* sc, float* y) {
    const __m512i d = _mm512_sub_epi32(bias, _mm512_add_epi32(cnt, cnt));
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_loadu_ps(sc)));
  }
  // 8 pixels x 16 channels: the AVX2 8x8 transpose on each half of the channels
  static IRNET_INLINE void store_cols(const float* y, float* out, int64_t stride) {
    transpose8x8_store(y, 16, out, stride);
    transpose8x8_store(y + 8, 16, out + 8 * stride, stride);
  }
  // (the AVX2 routine: this level's machines have AVX2)
  static constexpr bool PACK64 = true;
  static void pack64(const float* src, int64_t P, int64_t nc, uint64_t* out) { avx2::Ops::pack64(src, P, nc, out); }
  static constexpr int BF32 = 16, BF64 = 8, BF16 = 16, BBF16 = 16;
  static uint64_t neg_f32(const float* p) {
    return uint64_t(_mm512_cmp_ps_mask(_mm512_loadu_ps(p), _mm512_setzero_ps(), _CMP_LT_OQ));
  }
  static uint64_t neg_f64(const double* p) {
    return uint64_t(_mm512_cmp_pd_mask(_mm512_loadu_pd(p), _mm512_setzero_pd(), _CMP_LT_OQ));
  }
  static uint64_t neg_f16(const uint16_t* p) {
    const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return uint64_t(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ));
  }
  static uint64_t neg_bf16(const uint16_t* p) {
    const __m512i i = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
    return uint64_t(_mm512_cmp_ps_mask(_mm512_castsi512_ps(i), _mm512_setzero_ps(), _CMP_LT_OQ));
  }
};
#include "cpu/xnor_level_impl.inc"
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // IRNET_X86

// ============================================================================ table
int64_t conv_scratch_words(const ConvProblem& P, int64_t rows) {
  const int64_t info_words = int64_t(sizeof(RowInfo) / sizeof(uint64_t));
  return rows * (kMaxNR / 2 + info_words + 1 + 2 * P.kh * P.kw * P.words);
}

ConvScratch conv_scratch(uint64_t* scratch, int64_t rows) {
  ConvScratch S;
  S.ybuf = reinterpret_cast<float*>(scratch);
  S.info = reinterpret_cast<RowInfo*>(scratch + rows * (kMaxNR / 2));
  S.base = reinterpret_cast<const uint64_t**>(S.info + rows);
  S.patch = reinterpret_cast<uint64_t*>(S.base + rows);
  return S;
}

RowsLayout rows_layout(const ConvProblem& P, int split) {
  RowsLayout L;
  L.Hp = P.H + 2 * P.ph;
  L.Wp = P.W + 2 * P.pw;
  L.pix = P.words * split;
  L.row = L.Wp * L.pix;
  L.total = P.N * L.Hp * L.row;
  return L;
}

void rows_offsets(const ConvProblem& P, int split, int64_t* xoff) {
  const RowsLayout L = rows_layout(P, split);
  for (int64_t i = 0; i < P.kh; ++i)
    for (int64_t j = 0; j < P.kw; ++j)
      for (int64_t c = 0; c < P.words; ++c)
        xoff[(i * P.kw + j) * P.words + c] = i * P.dh * L.row + j * P.dw * L.pix + c * split;
}

void pack_weight_panels(const uint64_t* w, int64_t O, int64_t kh, int64_t kw, int64_t words, int nr, int split,
                        int64_t p0, int64_t p1, uint64_t* panels, int32_t* wrect) {
  const int64_t L = kh * kw * words;
  const int64_t opad = (O + nr - 1) / nr * nr;
  const int64_t ncell = (kh + 1) * (kw + 1);
  for (int64_t p = p0; p < p1; ++p) {
    // panel writes in order (nr rows read side by side: nr sequential read streams)
    uint64_t* dst = panels + p * L * nr * split;
    const int64_t lanes = O - p * nr < nr ? O - p * nr : nr;
    for (int64_t k = 0; k < L; ++k, dst += nr * split) {
      for (int q = 0; q < nr; ++q) {
        const uint64_t v = q < lanes ? w[(p * nr + q) * L + k] : 0;
        if (split == 1) {
          dst[q] = v;
        } else {  // nibble halves, as avx2::Ops::split
          dst[q] = v & 0x0F0F0F0F0F0F0F0FULL;
          dst[nr + q] = (v >> 4) & 0x0F0F0F0F0F0F0F0FULL;
        }
      }
    }
    // S[i][j][o] = sum over taps (i' < i, j' < j) of popcount(w[o, i', j', :])
    for (int64_t cell = 0; cell < ncell; ++cell)
      for (int q = 0; q < nr; ++q) wrect[cell * opad + p * nr + q] = 0;
    for (int64_t q = 0; q < lanes; ++q) {
      const int64_t o = p * nr + q;
      const uint64_t* src = w + o * L;
      for (int64_t i = 1; i <= kh; ++i) {
        for (int64_t j = 1; j <= kw; ++j) {
          const uint64_t* t = src + ((i - 1) * kw + (j - 1)) * words;
          int32_t tap = 0;
          for (int64_t c = 0; c < words; ++c) tap += int32_t(core::popcount64(t[c]));
          wrect[(i * (kw + 1) + j) * opad + o] = wrect[((i - 1) * (kw + 1) + j) * opad + o] +
                                                 wrect[(i * (kw + 1) + j - 1) * opad + o] -
                                                 wrect[((i - 1) * (kw + 1) + j - 1) * opad + o] + tap;
        }
      }
    }
  }
}

namespace {
struct LevelEntry {
  const char* name;
  const LevelKernels* kernels;
  bool (*runnable)();
};

#if IRNET_X86
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vpopcntdq");
}
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("f16c");
}
bool cpu_has_popcnt() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("popcnt");
}
#endif
bool always() { return true; }

// Best first.  "scalar" appears twice: with POPCNT where the CPU has it, else generic.
const LevelEntry kLevels[] = {
#if IRNET_X86
    {"avx512", &avx512::kKernels, &cpu_has_avx512},
    {"avx2", &avx2::kKernels, &cpu_has_avx2},
    {"scalar", &scalar::kKernels, &cpu_has_popcnt},
#endif
    {"scalar", &generic::kKernels, &always},
};
}  // namespace

int supported_levels(const char** names, int max_names) {
  int n = 0;
  const char* last = nullptr;
  for (const LevelEntry& e : kLevels) {
    if (!e.runnable()) continue;
    if (last && std::strcmp(last, e.name) == 0) continue;
    if (n < max_names) names[n] = e.name;
    last = e.name;
    ++n;
  }
  return n;
}

bool is_known_level(const char* name) {
  for (const LevelEntry& e : kLevels)
    if (std::strcmp(e.name, name) == 0) return true;
  return std::strcmp(name, "avx512") == 0 || std::strcmp(name, "avx2") == 0;
}

const LevelKernels* level_kernels(const char* name) {
  for (const LevelEntry& e : kLevels)
    if (std::strcmp(e.name, name) == 0 && e.runnable()) return e.kernels;
  return nullptr;
}

}  // namespace cpu
}  // namespace irnet
