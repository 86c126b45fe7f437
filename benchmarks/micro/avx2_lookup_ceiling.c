/* The ceiling of the table-lookup kernel's arithmetic on this CPU, without loads: how
 * many independent VPSHUFB + VPADDB pairs (one pair = 32 positions x 4 channels = 128
 * binary MACs in csrc/cpu/xnor_lut.cpp) one core retires per cycle, with the clock
 * estimated from a chain of dependent integer adds (one per cycle).  Used in README.md's
 * "why 12x is out of reach" paragraph.  One core; x86-64 with AVX2; GCC or Clang:
 *
 *     cc -O2 -mavx2 benchmarks/micro/avx2_lookup_ceiling.c -o /tmp/ceiling && /tmp/ceiling
 *
 * Prints the best of 5 runs of each loop (the machine is shared: other processes can only
 * slow a run down). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* 4 dependent adds per trip: one cycle each */
static double clock_ghz(long n) {
  uint64_t x = 1;
  double t = now();
  for (long i = 0; i < n; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  return 4.0 * n / (now() - t) / 1e9;
}

/* 8 independent accumulators, each += VPSHUFB(table, index) per trip (as the kernel's tile) */
static double pairs_per_ns(long n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const __m256i table = _mm256_set1_epi8(3), index = _mm256_set1_epi8(5);
  double t = now();
  for (long i = 0; i < n; i++) {
    __asm__ volatile(
        "vpshufb %[i], %[t], %%ymm8\n\tvpaddb %%ymm8, %[a0], %[a0]\n\t"
        "vpshufb %[i], %[t], %%ymm9\n\tvpaddb %%ymm9, %[a1], %[a1]\n\t"
        "vpshufb %[i], %[t], %%ymm10\n\tvpaddb %%ymm10, %[a2], %[a2]\n\t"
        "vpshufb %[i], %[t], %%ymm11\n\tvpaddb %%ymm11, %[a3], %[a3]\n\t"
        "vpshufb %[i], %[t], %%ymm8\n\tvpaddb %%ymm8, %[a4], %[a4]\n\t"
        "vpshufb %[i], %[t], %%ymm9\n\tvpaddb %%ymm9, %[a5], %[a5]\n\t"
        "vpshufb %[i], %[t], %%ymm10\n\tvpaddb %%ymm10, %[a6], %[a6]\n\t"
        "vpshufb %[i], %[t], %%ymm11\n\tvpaddb %%ymm11, %[a7], %[a7]\n\t"
        : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3), [a4] "+x"(a4), [a5] "+x"(a5), [a6] "+x"(a6),
          [a7] "+x"(a7)
        : [t] "x"(table), [i] "x"(index)
        : "xmm8", "xmm9", "xmm10", "xmm11");
  }
  double dt = now() - t;
  volatile int sink = _mm256_extract_epi8(_mm256_add_epi8(_mm256_add_epi8(a0, a7), _mm256_add_epi8(a3, a4)), 0);
  (void)sink;
  return 8.0 * n / dt / 1e9;
}

int main(void) {
  const long n = 50000000;
  double ghz = 0, pairs = 0;
  for (int r = 0; r < 5; r++) {
    double g = clock_ghz(n), p = pairs_per_ns(n / 4);
    if (g > ghz) ghz = g;
    if (p > pairs) pairs = p;
  }
  printf("clock (dependent adds): %.2f GHz\n", ghz);
  printf("VPSHUFB+VPADDB pairs: %.2f per ns = %.2f per cycle = %.0f binary MACs per cycle (%.0f GMAC/s) per core\n",
         pairs, pairs / ghz, 128 * pairs / ghz, 128 * pairs);
  printf("float32 FMA, for comparison: 2 x 8 lanes = 16 MACs per cycle per core on Zen 3 (%.0f GMAC/s at this clock)\n",
         16 * ghz);
  return 0;
}
