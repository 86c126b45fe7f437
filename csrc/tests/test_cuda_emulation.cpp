// The CUDA binary convolutions run on the host (no GPU needed): csrc/core/xnor_mma_conv.h
// (1-bit tensor cores) and csrc/core/xnor_popc_conv.h (CUDA cores), the very kernel bodies
// that csrc/cuda/*.cu launch, with the emulating execution policy of warp_emulator.h (the
// policy front-end of the block emulator cuda_block_emulator.h).
//
//  1. fragment maps (core/mma_b1_fragments.h): bijections onto A (16x256), B (256x8) and
//     C (16x8); each register 32 k-consecutive bits of one row / column; entries worked
//     out by hand from the PTX ISA's formulas;
//  2. one warp: the kernel's fragment loaders read random 16x256 / 256x8 bit tiles from
//     its swizzled shared-memory layout (several tile offsets and k-steps), the warp's mma
//     is applied with its documented semantics, the C registers are mapped back with the
//     epilogue's map, and D must equal C + the plain integer product, exactly;
//  3. every thread of every block of small launches of the tensor-core kernel (cp.async
//     double buffering, loaders, per-pixel / per-channel popcount corrections, epilogue) on
//     random convolutions with channel tails, padding (also larger than half the kernel),
//     stride 2, dilation, batch 1 and 3, several blocks, under several thread orders and
//     both cp.async landing extremes, against a plain per-bit convolution; fused and
//     unfused, NCHW and channels_last output;
//  4. the same replay for the CUDA-core kernel, and batch 0 (no block at all).
// Built and run by CMakeLists.txt (ctest); tests/test_ctest.py drives it from pytest.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "core/xnor_mma_conv.h"
#include "core/xnor_popc_conv.h"
#include "warp_emulator.h"

#include "tests/check.h"
#include "tests/naive_conv.h"

using namespace irnet;
namespace F = irnet::core::mma_b1;
namespace mc = irnet::core::mma_conv;
namespace pc = irnet::core::popc_conv;
using irnet::core::GpuConvShape;
using irnet_test::BlockEmulator;
using irnet_test::HostExec;
using irnet_test::Landing;
using irnet_test::Order;


static std::mt19937_64 rng(20240607);

// ---------------------------------------------------------------- 1. fragment maps
static void test_fragment_maps() {
  std::set<std::pair<int, int>> a, b, c;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 128; ++i) {
      const int row = F::a_row(lane, i), col = F::a_col(lane, i);
      CHECK(row >= 0 && row < 16 && col >= 0 && col < 256, "A lane %d i %d -> (%d, %d)", lane, i, row, col);
      a.insert({row, col});
    }
    for (int i = 0; i < 64; ++i) {
      const int row = F::b_row(lane, i), col = F::b_col(lane, i);
      CHECK(row >= 0 && row < 256 && col >= 0 && col < 8, "B lane %d i %d -> (%d, %d)", lane, i, row, col);
      b.insert({row, col});
    }
    for (int i = 0; i < 4; ++i) {
      const int row = F::c_row(lane, i), col = F::c_col(lane, i);
      CHECK(row >= 0 && row < 16 && col >= 0 && col < 8, "C lane %d i %d -> (%d, %d)", lane, i, row, col);
      c.insert({row, col});
    }
    // register level = element level: register r holds 32 k-consecutive bits of one row / column
    for (int r = 0; r < F::kARegs; ++r)
      for (int bit = 0; bit < 32; ++bit) {
        CHECK(F::a_row(lane, 32 * r + bit) == F::a_reg_row(lane, r), "A lane %d reg %d bit %d row", lane, r, bit);
        CHECK(F::a_col(lane, 32 * r + bit) == 32 * F::a_reg_k32(lane, r) + bit, "A lane %d reg %d bit %d col", lane, r,
              bit);
      }
    for (int r = 0; r < F::kBRegs; ++r)
      for (int bit = 0; bit < 32; ++bit) {
        CHECK(F::b_col(lane, 32 * r + bit) == F::b_reg_col(lane, r), "B lane %d reg %d bit %d col", lane, r, bit);
        CHECK(F::b_row(lane, 32 * r + bit) == 32 * F::b_reg_k32(lane, r) + bit, "B lane %d reg %d bit %d row", lane, r,
              bit);
      }
  }
  // every element of each matrix exactly once (32 lanes x 128 / 64 / 4 distinct elements)
  CHECK(a.size() == 16u * 256u, "A covers %zu of 4096 elements", a.size());
  CHECK(b.size() == 256u * 8u, "B covers %zu of 2048 elements", b.size());
  CHECK(c.size() == 16u * 8u, "C covers %zu of 128 elements", c.size());

  // Entries worked out by hand from the PTX formulas (groupID = lane >> 2,
  // threadID_in_group = lane % 4), independent of the code above.
  struct Entry {
    int lane, i, row, col;
  };
  const Entry A[] = {{0, 0, 0, 0},       {0, 31, 0, 31},     {0, 32, 8, 0},     {0, 63, 8, 31},
                     {0, 64, 0, 128},    {0, 96, 8, 128},    {1, 0, 0, 32},     {3, 5, 0, 101},
                     {7, 5, 1, 101},     {5, 40, 9, 40},     {5, 100, 9, 164},  {22, 70, 5, 198},
                     {31, 127, 15, 255}, {28, 0, 7, 0},      {30, 33, 15, 65},  {13, 95, 3, 191}};
  for (const Entry& e : A)
    CHECK(F::a_row(e.lane, e.i) == e.row && F::a_col(e.lane, e.i) == e.col, "A lane %d a%d: (%d, %d), PTX (%d, %d)",
          e.lane, e.i, F::a_row(e.lane, e.i), F::a_col(e.lane, e.i), e.row, e.col);
  const Entry B[] = {{0, 0, 0, 0},     {0, 31, 31, 0},    {0, 32, 128, 0}, {1, 0, 32, 0},
                     {6, 33, 193, 1},  {31, 63, 255, 7},  {12, 7, 7, 3},   {27, 40, 232, 6}};
  for (const Entry& e : B)
    CHECK(F::b_row(e.lane, e.i) == e.row && F::b_col(e.lane, e.i) == e.col, "B lane %d b%d: (%d, %d), PTX (%d, %d)",
          e.lane, e.i, F::b_row(e.lane, e.i), F::b_col(e.lane, e.i), e.row, e.col);
  const Entry C[] = {{0, 0, 0, 0}, {0, 1, 0, 1}, {0, 2, 8, 0}, {0, 3, 8, 1}, {13, 2, 11, 2}, {31, 3, 15, 7}, {6, 1, 1, 5}};
  for (const Entry& e : C)
    CHECK(F::c_row(e.lane, e.i) == e.row && F::c_col(e.lane, e.i) == e.col, "C lane %d c%d: (%d, %d), PTX (%d, %d)",
          e.lane, e.i, F::c_row(e.lane, e.i), F::c_col(e.lane, e.i), e.row, e.col);

  // the swizzled stage layout is a permutation of each row's 8 words (no two words share a slot)
  for (int row = 0; row < mc::kBM; ++row) {
    std::set<int> slots;
    for (int w = 0; w < mc::kStageWords; ++w) slots.insert(mc::smem_word(row, w));
    CHECK(slots.size() == 8u && *slots.begin() == row * 8 && *slots.rbegin() == row * 8 + 7, "smem row %d", row);
  }
  // ... and a warp's fragment read touches 32 different banks (4-byte words)
  for (int step = 0; step < 2; ++step)
    for (int r = 0; r < F::kARegs; ++r) {
      std::set<int> banks;
      for (int lane = 0; lane < 32; ++lane)
        banks.insert(mc::smem_u32(16 + F::a_reg_row(lane, r), step * 8 + F::a_reg_k32(lane, r)) % 32);
      CHECK(banks.size() == 32u, "A fragment reg %d step %d: %zu banks", r, step, banks.size());
    }
}

// ---------------------------------------------------------------- 2. one warp
static void test_warp_tile() {
  for (int trial = 0; trial < 40; ++trial) {
    static bool A[16][256], B[256][8];
    int C[16][8];
    const int density = 1 + trial % 7;  // some sparse, some dense bit patterns
    for (auto& row : A)
      for (bool& v : row) v = static_cast<int>(rng() % 8) < density;
    for (auto& row : B)
      for (bool& v : row) v = static_cast<int>(rng() % 8) < density;
    for (auto& row : C)
      for (int& v : row) v = static_cast<int>(rng() % 2001) - 1000;
    const int row0 = 16 * static_cast<int>(rng() % (mc::kBM / 16));
    const int col0 = 8 * static_cast<int>(rng() % (mc::kBN / 8));
    const int step = static_cast<int>(rng() % 2);
    // the kernel's stage buffers, garbage elsewhere; bit k of a row at 32-bit word smem_u32(row, 8*step + k/32)
    std::vector<uint32_t> as(mc::kBM * mc::kStageWords * 2), bs(mc::kBN * mc::kStageWords * 2);
    for (auto& v : as) v = static_cast<uint32_t>(rng());
    for (auto& v : bs) v = static_cast<uint32_t>(rng());
    for (int i = 0; i < 16; ++i)
      for (int q = 0; q < 8; ++q) as[mc::smem_u32(row0 + i, step * 8 + q)] = 0;
    for (int j = 0; j < 8; ++j)
      for (int q = 0; q < 8; ++q) bs[mc::smem_u32(col0 + j, step * 8 + q)] = 0;
    for (int i = 0; i < 16; ++i)
      for (int k = 0; k < 256; ++k)
        if (A[i][k]) as[mc::smem_u32(row0 + i, step * 8 + k / 32)] |= 1u << (k % 32);
    for (int j = 0; j < 8; ++j)
      for (int k = 0; k < 256; ++k)
        if (B[k][j]) bs[mc::smem_u32(col0 + j, step * 8 + k / 32)] |= 1u << (k % 32);
    // the lanes' registers, through the kernel's fragment loaders
    uint32_t ar[32][4], br[32][2];
    int cr[32][4], dr[32][4];
    for (int lane = 0; lane < 32; ++lane) {
      mc::load_a_fragment(as.data(), row0, step, lane, ar[lane]);
      mc::load_b_fragment(bs.data(), col0, step, lane, br[lane]);
      for (int r = 0; r < 4; ++r) cr[lane][r] = C[F::c_row(lane, r)][F::c_col(lane, r)];
    }
    irnet_test::emulate_mma_m16n8k256_and_popc(ar, br, cr, dr);
    int bad = 0;
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r) {
        const int i = F::c_row(lane, r), j = F::c_col(lane, r);
        int want = C[i][j];
        for (int k = 0; k < 256; ++k) want += A[i][k] && B[k][j];
        if (dr[lane][r] != want && bad++ < 3)
          CHECK(false, "trial %d lane %d c%d = D[%d][%d]: %d, integer product %d", trial, lane, r, i, j, dr[lane][r],
                want);
      }
  }
}

// ---------------------------------------------------------------- conv problems
struct Case {
  int N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw;
};

static GpuConvShape shape_of(const Case& c) {
  return core::make_gpu_conv_shape(c.N, c.C, c.H, c.W, c.O, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw);
}

// A problem's operands (random words, garbage in the tail bits too) and epilogue inputs.
struct Problem {
  GpuConvShape g;
  std::vector<uint64_t> x, w;
  std::vector<float> scale, alpha, beta, residual;
  std::vector<int64_t> dot;  // plain per-bit convolution, NCHW order
  float lo = -1.5f, hi = 2.0f;
};

static Problem make_problem(const Case& c) {
  Problem P;
  P.g = shape_of(c);
  const GpuConvShape& g = P.g;
  P.x.resize(static_cast<size_t>(g.N * g.H * g.W * g.words));
  P.w.resize(static_cast<size_t>(g.O * g.K));
  for (auto& v : P.x) v = rng();
  for (auto& v : P.w) v = rng();
  std::normal_distribution<float> normal;
  for (int64_t o = 0; o < g.O; ++o) {
    P.scale.push_back(std::ldexp(1.0f, static_cast<int>(rng() % 9) - 4) * (rng() % 5 == 0 ? 0.0f : 1.0f));
    P.alpha.push_back(normal(rng));
    P.beta.push_back(normal(rng));
  }
  const int64_t out = g.npix * g.O;
  for (int64_t i = 0; i < out; ++i) P.residual.push_back(i % 97 == 5 ? NAN : normal(rng));
  P.dot = naive_binary_conv(P.x, P.w, g, g.channels);
  return P;
}

// The expected output at NCHW index (n, o, pixel), stored at `off`, written out plainly.
static float expected(const Problem& P, bool fused, bool with_scale, bool with_residual, int64_t o, int64_t dot,
                      int64_t off) {
  float v = static_cast<float>(dot);
  if (with_scale) v = v * P.scale[static_cast<size_t>(o)];
  if (fused) {
    v = v * P.alpha[static_cast<size_t>(o)] + P.beta[static_cast<size_t>(o)];
    if (with_residual) v = v + P.residual[static_cast<size_t>(off)];
    if (v < P.lo) v = P.lo;
    if (v > P.hi) v = P.hi;
  }
  return v;
}

struct Variant {
  bool fused, channels_last, scale, residual;
  Order order;
  Landing landing;
};

// Compares y (written by a kernel) with the plain convolution (the first 3 mismatches fail a check).
static void compare_output(const Problem& P, const Variant& v, const std::vector<float>& y, const char* what,
                          const Case& c) {
  const GpuConvShape& g = P.g;
  int bad = 0;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t o = 0; o < g.O; ++o)
      for (int64_t hw = 0; hw < g.Ho * g.Wo; ++hw) {
        const int64_t p = n * g.Ho * g.Wo + hw;
        const int64_t off = v.channels_last ? p * g.O + o : (n * g.O + o) * g.Ho * g.Wo + hw;
        const int64_t dot = P.dot[static_cast<size_t>((n * g.O + o) * g.Ho * g.Wo + hw)];
        const float want = expected(P, v.fused, v.scale, v.residual, o, dot, off);
        const float got = y[static_cast<size_t>(off)];
        if (std::memcmp(&want, &got, sizeof want) != 0 && !(std::isnan(want) && std::isnan(got))) {
          if (bad++ < 3)
            CHECK(false, "%s N%d C%d %dx%d O%d k%dx%d s%d%d p%d%d d%d%d fused=%d cl=%d: y[n=%lld, o=%lld, p=%lld] = %.9g, want %.9g (dot %lld)",
                  what, c.N, c.C, c.H, c.W, c.O, c.kh, c.kw, c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, v.fused,
                  v.channels_last, (long long)n, (long long)o, (long long)hw, got, want, (long long)dot);
        }
      }
}

static core::ConvEpilogue epilogue_for(const Problem& P, const Variant& v, std::vector<float>& y) {
  core::ConvEpilogue e{};
  e.y = y.data();
  e.scale = v.scale ? P.scale.data() : nullptr;
  e.alpha = P.alpha.data();
  e.beta = P.beta.data();
  e.residual = v.residual ? P.residual.data() : nullptr;
  e.lo = P.lo, e.hi = P.hi;
  return e;
}

// Each conv runs in these four forms: every epilogue template, and thread schedules and
// cp.async landings that together catch a missing wait (late landing) and a missing
// barrier before a buffer is refilled (a greedy schedule with early landing).
static const Variant kVariants[] = {
    {false, false, false, false, Order::ascending, Landing::late},
    {false, true, true, false, Order::greedy_low, Landing::early},
    {true, false, true, true, Order::shuffled, Landing::late},
    {true, true, false, true, Order::greedy_high, Landing::early},
};

// ---------------------------------------------------------------- 3. tensor-core kernel
template <bool kFused, bool kCL>
static void run_mma(const Problem& P, const Variant& v, bool pairs, std::vector<float>& y, BlockEmulator& emu) {
  const GpuConvShape& g = P.g;
  // the prep pass (xnor_mma_prep_kernel's three loops)
  const int kp = mc::padded_k_words(g);
  std::vector<uint64_t> wq(static_cast<size_t>(mc::padded_channels(g) * kp));
  for (size_t i = 0; i < wq.size(); ++i)
    wq[i] = mc::prepared_weight_word(g, P.w.data(), static_cast<int64_t>(i) / kp, static_cast<int>(i % kp));
  std::vector<int32_t> wprefix(static_cast<size_t>(g.O * mc::prefix_size(g)));
  for (int64_t o = 0; o < g.O; ++o) mc::weight_tap_prefix(g, P.w.data(), o, wprefix.data() + o * mc::prefix_size(g));
  std::vector<int32_t> pixpop(static_cast<size_t>(g.N * g.H * g.W));
  for (size_t i = 0; i < pixpop.size(); ++i) pixpop[i] = mc::pixel_popcount(g, P.x.data(), static_cast<int64_t>(i));

  mc::Params prm{};
  prm.g = g;
  prm.x = P.x.data();
  prm.wq = wq.data();
  prm.wprefix = wprefix.data();
  prm.pixpop = pixpop.data();
  prm.out = epilogue_for(P, v, y);
  prm.kp = kp;
  prm.x_pairs = pairs;
  emu.allow_reads(P.x.data(), P.x.size() * 8);
  emu.allow_reads(wq.data(), wq.size() * 8);
  emu.allow_reads(pixpop.data(), pixpop.size() * 4);
  auto sh = std::make_unique<mc::Shared>();
  for (int64_t bm = 0; bm < mc::grid_m(g); ++bm)
    for (int64_t bn = 0; bn < mc::grid_n(g); ++bn)
      emu.run_block(sh.get(), sizeof(mc::Shared), [&](HostExec& ex, int tid) {
        mc::conv_block<kFused, kCL>(ex, *sh, prm, bm, bn, tid);
      });
}

template <class Run>
static void run_variant(const Problem& P, const Variant& v, const Case& c, const char* what, Run&& run) {
  const GpuConvShape& g = P.g;
  std::vector<float> y(static_cast<size_t>(g.npix * g.O), -12345.0f);  // every element must be written
  BlockEmulator emu(128, v.order, v.landing, rng());
  if (v.fused) {
    if (v.channels_last) run(std::true_type{}, std::true_type{}, y, emu);
    else run(std::true_type{}, std::false_type{}, y, emu);
  } else {
    if (v.channels_last) run(std::false_type{}, std::true_type{}, y, emu);
    else run(std::false_type{}, std::false_type{}, y, emu);
  }
  CHECK(emu.errors == 0, "%s N%d C%d %dx%d O%d: %d emulation errors", what, c.N, c.C, c.H, c.W, c.O, emu.errors);
  compare_output(P, v, y, what, c);
}

static const Case kCases[] = {
    // N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw
    {1, 1, 5, 5, 1, 3, 3, 1, 1, 1, 1, 1, 1},       // one channel, one output channel
    {2, 63, 9, 9, 17, 3, 3, 2, 2, 1, 1, 1, 1},     // tail of 63 bits, stride 2
    {3, 65, 9, 9, 33, 3, 3, 1, 1, 1, 1, 1, 1},     // 243 pixels: 2 pixel blocks; 2 words (pairs)
    {2, 130, 7, 7, 20, 3, 3, 2, 1, 2, 1, 2, 1},    // 3 words, dilation 2, mixed strides
    {1, 100, 10, 11, 8, 5, 3, 1, 2, 2, 1, 1, 2},   // non-square kernel, dilation on columns
    {1, 70, 4, 4, 9, 3, 3, 1, 1, 3, 3, 1, 1},      // padding 3 > kernel/2: all-padding rows
    {1, 7, 3, 3, 4, 3, 3, 1, 1, 2, 2, 2, 2},       // padding and dilation 2 on a 3x3 image
    {1, 5, 1, 1, 3, 7, 7, 1, 1, 3, 3, 1, 1},       // 1x1 input: only the centre tap in frame
    {1, 256, 6, 6, 70, 3, 3, 1, 1, 1, 1, 1, 1},    // 4 words (one k-step per tap), 2 channel blocks
    {1, 512, 3, 3, 64, 3, 3, 1, 1, 1, 1, 1, 1},    // 8 words per tap (ResNet-18 stage 4 width)
    {3, 64, 12, 12, 16, 3, 3, 1, 1, 1, 1, 1, 1},   // 1 word per tap (stage 1 width), 4 pixel blocks
    {2, 128, 5, 5, 64, 1, 1, 2, 2, 0, 0, 1, 1},    // 1x1 conv, stride 2
    {130, 300, 1, 1, 10, 1, 1, 1, 1, 0, 0, 1, 1},  // a linear layer (H = W = kh = kw = 1), 2 blocks
};

static void test_mma_kernel() {
  int runs = 0;
  for (const Case& c : kCases) {
    const Problem P = make_problem(c);
    for (size_t vi = 0; vi < sizeof(kVariants) / sizeof(kVariants[0]); ++vi) {
      const Variant& v = kVariants[vi];
      // 16-byte A copies where the kernel would use them (even words), 8-byte ones too
      const bool pairs = P.g.words % 2 == 0 && vi % 2 == 0;
      run_variant(P, v, c, pairs ? "mma(16-byte A copies)" : "mma", [&](auto fused, auto cl, std::vector<float>& y,
                                                                        BlockEmulator& emu) {
        run_mma<decltype(fused)::value, decltype(cl)::value>(P, v, pairs, y, emu);
      });
      ++runs;
    }
  }
  std::printf("tensor-core kernel: %d emulated launches\n", runs);
}

// ---------------------------------------------------------------- 4. CUDA-core kernel
template <bool kFused, bool kCL>
static void run_popc(const Problem& P, const Variant& v, std::vector<float>& y, BlockEmulator& emu) {
  pc::Params prm{};
  prm.g = P.g;
  prm.x = P.x.data();
  prm.w = P.w.data();
  prm.out = epilogue_for(P, v, y);
  prm.ctiles = pc::channel_tiles(P.g);
  emu.allow_reads(P.x.data(), P.x.size() * 8);
  emu.allow_reads(P.w.data(), P.w.size() * 8);
  auto sh = std::make_unique<pc::Shared>();
  for (int64_t b = 0; b < pc::grid_blocks(P.g); ++b)
    emu.run_block(sh.get(), sizeof(pc::Shared), [&](HostExec& ex, int tid) {
      pc::conv_block<kFused, kCL>(ex, *sh, prm, b, tid);
    });
}

static void test_popc_kernel() {
  int runs = 0;
  std::vector<Case> cases(std::begin(kCases), std::end(kCases));
  cases.push_back({1, 1920, 6, 6, 20, 3, 3, 1, 1, 1, 1, 1, 1});  // K = 270 words: 3 chunks, a chunk starts mid-tap
  cases.push_back({2, 12800, 3, 3, 18, 1, 1, 1, 1, 0, 0, 1, 1});  // 200 words in one tap: chunk starts at word 128
  for (const Case& c : cases) {
    const Problem P = make_problem(c);
    for (const Variant& v : kVariants) {
      run_variant(P, v, c, "popc", [&](auto fused, auto cl, std::vector<float>& y, BlockEmulator& emu) {
        run_popc<decltype(fused)::value, decltype(cl)::value>(P, v, y, emu);
      });
      ++runs;
    }
  }
  // batch 0: no pixel, no block (the ops return before launching; the grid is empty too)
  const GpuConvShape g0 = shape_of({0, 64, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1});
  CHECK(pc::grid_blocks(g0) == 0 && mc::grid_m(g0) == 0, "batch 0 gives %lld / %lld blocks",
        (long long)pc::grid_blocks(g0), (long long)mc::grid_m(g0));
  std::printf("CUDA-core kernel: %d emulated launches\n", runs);
}

// The `auto` rule of csrc/cuda/xnor.cu: tensor cores for ResNet-18's 3x3 layers on sm_80 /
// sm_90, never on other GPUs, not for tiny calls, not where the tile padding explodes.
static void test_auto_choice() {
  const Case resnet18[] = {{64, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, 1, 1},   {64, 128, 28, 28, 128, 3, 3, 1, 1, 1, 1, 1, 1},
                           {256, 256, 14, 14, 256, 3, 3, 1, 1, 1, 1, 1, 1}, {256, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1, 1, 1},
                           {64, 256, 14, 14, 512, 3, 3, 2, 2, 1, 1, 1, 1}};
  for (const Case& c : resnet18) {
    const GpuConvShape g = shape_of(c);
    CHECK(mc::auto_prefers_mma(g, 8) && mc::auto_prefers_mma(g, 9), "ResNet-18 layer C%d at batch %d: not mma", c.C, c.N);
    for (int major : {6, 7, 10, 12}) CHECK(!mc::auto_prefers_mma(g, major), "mma chosen on compute capability %d", major);
  }
  CHECK(!mc::auto_prefers_mma(shape_of({1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1}), 8), "a tiny layer took mma");
  // a 1x1 conv of 64 channels to 1: the tiles pad 1 channel to 64 and 64 bits to 256 (16x the
  // CUDA-core path's padded work), though the call is big enough
  const GpuConvShape g1 = shape_of({128, 64, 32, 32, 1, 1, 1, 1, 1, 0, 0, 1, 1});
  CHECK(!mc::auto_prefers_mma(g1, 8), "a 64 -> 1 channel 1x1 conv took mma");
  CHECK(mc::auto_prefers_mma(shape_of({128, 64, 32, 32, 64, 1, 1, 1, 1, 0, 0, 1, 1}), 8), "64 -> 64 1x1 conv: not mma");
}

// The emulator itself must catch a missing barrier: a body that reads shared memory
// another thread writes, with no sync, reads the old value in every order.
static void test_emulator_catches_races() {
  for (Order order : irnet_test::kAllOrders) {
    BlockEmulator emu(128, order, Landing::late, 7);
    std::vector<int> sh(128, 0);
    int wrong = 0;
    emu.run_block(sh.data(), sh.size() * sizeof(int), [&](HostExec& ex, int tid) {
      sh[static_cast<size_t>(tid)] = tid + 1;
      (void)ex;  // no ex.sync() here: the neighbour's value may not be written yet
      if (sh[static_cast<size_t>((tid + 1) % 128)] != (tid + 1) % 128 + 1) ++wrong;
    });
    CHECK(wrong > 0, "the emulator ran a racy body as if it were synchronised (order %s)", irnet_test::order_name(order));
  }
  // and a divergent barrier deadlocks
  BlockEmulator emu(128, Order::ascending, Landing::late, 7);
  emu.verbose = false;  // the deadlock is expected here
  std::vector<int> sh(4);
  emu.run_block(sh.data(), sh.size() * sizeof(int), [&](HostExec& ex, int tid) {
    if (tid != 5) ex.sync();
  });
  CHECK(emu.errors == 1, "a barrier thread 5 never reaches was not reported (%d errors)", emu.errors);
  // and so do the lanes of a warp that meet at different collectives (mma.sync / __syncwarp)
  BlockEmulator mixed(32, Order::ascending, Landing::late, 7);
  mixed.verbose = false;
  mixed.run_block(sh.data(), sh.size() * sizeof(int), [&](HostExec& ex, int tid) {
    int d[4] = {};
    const uint32_t a[4] = {}, b[2] = {};
    if (tid < 16) ex.mma_b1_and_popc(d, a, b);
    else mixed.sync_warp();
  });
  CHECK(mixed.errors == 1, "lanes at mma.sync and __syncwarp were not reported (%d errors)", mixed.errors);
}

int main() {
  g_messages_per_section = 5;
  section("1. fragment maps (PTX tables)", test_fragment_maps);
  section("2. one warp: loaders + mma + C map vs integer GEMM", test_warp_tile);
  section("   emulator self-test (race, deadlock, warp ops)", test_emulator_catches_races);
  section("3. tensor-core kernel, every thread, vs plain conv", test_mma_kernel);
  section("   the 'auto' rule between the two kernels", test_auto_choice);
  section("4. CUDA-core kernel, every thread, vs plain conv", test_popc_kernel);
  if (g_failures) {
    std::printf("%d check(s) FAILED\n", g_failures);
    return 1;
  }
  std::printf("all CUDA emulation checks passed\n");
  return 0;
}
