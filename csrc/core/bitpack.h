// irnet core: the bit layout shared by every kernel, popcount, packing, XNOR dot.
//
// Layout (all devices): a float tensor (N, C, *S) packs to 64-bit words of shape
// (N, *S, ceil(C/64)); channel c lives in word c/64, bit c%64; the bit is 1 iff the
// value is < 0 (it stands for -1), so -0.0 and NaN pack to 0 (+1).  Tail bits past
// C are 0 in every operand, so they XOR to 0 and never count.
//
// XNOR dot of two packed +-1 vectors of length K (a, w in {-1,+1}^K):
//   sum_i a_i w_i = (#equal) - (#different) = K - 2 * popcount(a XOR w).
//
// Torch-free; functions marked IRNET_HD are usable from CUDA kernels too.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace irnet {
namespace core {

constexpr int kWordBits = 64;

// Words needed for `channels` bits: ceil(channels / 64).
IRNET_HD constexpr int64_t num_words(int64_t channels) { return (channels + kWordBits - 1) / kWordBits; }

// Mask of the valid bits of the last word for `channels` bits (all ones when a multiple of 64).
IRNET_HD constexpr uint64_t tail_mask(int64_t channels) {
  return (channels % kWordBits) == 0 ? ~uint64_t(0) : ((uint64_t(1) << (channels % kWordBits)) - 1);
}

// Population count of a 64-bit word.  Device: __popcll.  Host: the POPCNT
// instruction where the build targets it (or a non-x86 CPU's own count); on a baseline
// x86-64 build the inline SWAR count below, which beats libgcc's __popcountdi2 call.
// (The SIMD kernels of csrc/cpu use their own per-level counts.)
IRNET_HD IRNET_INLINE int popcount64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __popcll(v);
#elif (defined(__GNUC__) || defined(__clang__)) && (defined(__POPCNT__) || !(defined(__x86_64__) || defined(__i386__)))
  return __builtin_popcountll(v);
#else
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return int((v * 0x0101010101010101ULL) >> 56);
#endif
}

// ---- sign tests: the bit is 1 iff value < 0 (false for -0.0 and NaN) -------------
IRNET_HD IRNET_INLINE bool is_negative(float v) { return v < 0.0f; }
IRNET_HD IRNET_INLINE bool is_negative(double v) { return v < 0.0; }
// IEEE half, raw bits: sign set, not a zero (magnitude > 0), not a NaN (magnitude <= inf 0x7c00).
IRNET_HD IRNET_INLINE bool is_negative_f16_bits(uint16_t h) {
  const uint16_t mag = uint16_t(h & 0x7fffu);
  return (h & 0x8000u) != 0 && mag != 0 && mag <= 0x7c00u;
}
// bfloat16, raw bits: same test with the float32 exponent (inf = 0x7f80).
IRNET_HD IRNET_INLINE bool is_negative_bf16_bits(uint16_t h) {
  const uint16_t mag = uint16_t(h & 0x7fffu);
  return (h & 0x8000u) != 0 && mag != 0 && mag <= 0x7f80u;
}

struct F16Bits {};   // tag types: the uint16_t data is an IEEE half / a bfloat16
struct BF16Bits {};

template <class Tag, class T>
IRNET_HD IRNET_INLINE bool is_negative_as(T v) { return is_negative(v); }
template <>
IRNET_HD IRNET_INLINE bool is_negative_as<F16Bits, uint16_t>(uint16_t v) { return is_negative_f16_bits(v); }
template <>
IRNET_HD IRNET_INLINE bool is_negative_as<BF16Bits, uint16_t>(uint16_t v) { return is_negative_bf16_bits(v); }

// Packs n (<= 64) values p[0], p[stride], ... into one word: bit i = (p[i*stride] < 0).
template <class Tag = void, class T>
IRNET_HD inline uint64_t pack_word_strided(const T* p, int64_t stride, int64_t n) {
  uint64_t m = 0;
  for (int64_t i = 0; i < n; ++i) m |= uint64_t(is_negative_as<Tag>(p[i * stride]) ? 1 : 0) << i;
  return m;
}

// Packs a row of `channels` values (element stride `stride`) into num_words(channels)
// words at out: the reference packing every fast path is checked against.
template <class Tag = void, class T>
IRNET_HD inline void pack_row_strided(const T* p, int64_t stride, int64_t channels, uint64_t* out) {
  const int64_t words = num_words(channels);
  for (int64_t w = 0; w < words; ++w) {
    const int64_t c0 = w * kWordBits;
    const int64_t n = channels - c0 < kWordBits ? channels - c0 : kWordBits;
    out[w] = pack_word_strided<Tag>(p + c0 * stride, stride, n);
  }
}

// In-place transpose of a 64x64 bit matrix held as 64 words, bit j of word i = M[i][j]
// (LSB = column 0).  After the call bit j of word i = old M[j][i].
// Recursive block swap: at level j (32, 16, ..., 1) every 2j x 2j block is split into
// four j x j blocks and the top-right (rows k, high j bits) is exchanged with the
// bottom-left (rows k+j, low j bits): t = ((a[k] >> j) ^ a[k+j]) & m swaps both.
IRNET_HD inline void transpose64(uint64_t* a) {
  uint64_t m = 0x00000000FFFFFFFFULL;
  for (int j = 32; j != 0; j >>= 1, m ^= (m << j)) {
    for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
      a[k] ^= t << j;
      a[k | j] ^= t;
    }
  }
}

// Number of differing bits between two packed rows of `words` words.
IRNET_HD inline int64_t xor_popcount(const uint64_t* a, const uint64_t* b, int64_t words) {
  int64_t s = 0;
  for (int64_t i = 0; i < words; ++i) s += popcount64(a[i] ^ b[i]);
  return s;
}

// The scalar XNOR dot: sum_i a_i b_i = length - 2 * popcount(a XOR b) (tail bits are 0).
IRNET_HD inline int64_t xnor_dot(const uint64_t* a, const uint64_t* b, int64_t words, int64_t length) {
  return length - 2 * xor_popcount(a, b, words);
}

}  // namespace core
}  // namespace irnet
