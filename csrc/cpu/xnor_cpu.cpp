// irnet CPU: bit packing and XNOR-popcount convolution / linear, registered for the
// schemas of csrc/irnet.cpp, plus the SIMD-level controls (cpu_simd_level & co).
//
// The kernels themselves are torch-free (csrc/cpu/xnor_simd.cpp, one body compiled
// per SIMD level); this file checks arguments, lays out the weights, splits the work
// over at::parallel_for (which honours torch.set_num_threads) and picks the level.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <cstdlib>
#include <string>
#include <algorithm>
#include <array>
#include <memory>
#include <vector>

#include "core/bitpack.h"
#include "core/conv_geometry.h"
#include "cpu/xnor_cpu.h"
#include "cpu/xnor_lut.h"
#include "cpu/xnor_planes.h"
#include "cpu/xnor_simd.h"

namespace irnet {
namespace cpu {
namespace {

using at::Tensor;

// ---------------------------------------------------------------- SIMD level choice
std::string supported_list() {
  const char* names[8];
  const int n = supported_levels(names, 8);
  std::string s;
  for (int i = 0; i < n && i < 8; ++i) s += (i ? ", " : "") + std::string(names[i]);
  return s;
}

const LevelKernels* best_level() {
  const char* names[8];
  supported_levels(names, 8);  // the portable scalar level is always there
  return level_kernels(names[0]);
}

// The level at load: IRNET_SIMD=scalar|avx2|avx512 forces one; a level this CPU (or
// build) cannot run falls back to the best supported one, with a warning.
const LevelKernels* initial_level() {
  const char* env = std::getenv("IRNET_SIMD");
  if (env == nullptr || *env == '\0') return best_level();
  if (const LevelKernels* k = level_kernels(env)) return k;
  const LevelKernels* best = best_level();
  TORCH_WARN("irnet: IRNET_SIMD=", env, " is ", is_known_level(env) ? "not supported by this CPU" : "not a known level",
             " (levels supported here: ", supported_list(), "); using '", best->name, "'");
  return best;
}

std::atomic<const LevelKernels*>& level_slot() {
  static std::atomic<const LevelKernels*> slot{initial_level()};
  return slot;
}
const LevelKernels* current() { return level_slot().load(std::memory_order_relaxed); }
// Decide (and warn) when the library loads, not at the first call.
const bool kLevelChosen = (level_slot(), true);

std::string cpu_simd_level() { return current()->name; }

std::vector<std::string> cpu_simd_levels() {
  const char* names[8];
  const int n = supported_levels(names, 8);
  return std::vector<std::string>(names, names + (n < 8 ? n : 8));
}

void set_cpu_simd_level(const std::string& level) {
  const LevelKernels* k = level_kernels(level.c_str());
  TORCH_CHECK(k != nullptr, "irnet::set_cpu_simd_level: expected one of the levels this CPU supports (",
              supported_list(), "), got '", level, "'",
              is_known_level(level.c_str()) ? " (known, but this CPU lacks the instructions)" : " (unknown level)");
  level_slot().store(k, std::memory_order_relaxed);
}

// ---------------------------------------------------------------- conv algorithm choice
// "popcount": the XNOR-popcount tile of every level; "lut": the table-lookup kernel
// (xnor_lut.h; AVX2 level only) wherever it applies; "planes": the position-vectorized
// popcount kernel (xnor_planes.h; AVX-512 level only, with BITALG) wherever it applies;
// "auto": at each level the faster one per layer (prefers_lut, prefers_planes).
// IRNET_CPU_CONV sets the choice at load.
const char* const kAlgoNames[] = {"auto", "popcount", "lut", "planes"};
constexpr int kAlgoAuto = 0, kAlgoPopcount = 1, kAlgoLut = 2, kAlgoPlanes = 3;
constexpr int kAlgoCount = 4;

int algo_index(const std::string& name) {
  for (int i = 0; i < kAlgoCount; ++i)
    if (name == kAlgoNames[i]) return i;
  return -1;
}

int initial_algo() {
  const char* env = std::getenv("IRNET_CPU_CONV");
  if (env == nullptr || *env == '\0') return kAlgoAuto;
  const int i = algo_index(env);
  if (i >= 0) return i;
  TORCH_WARN("irnet: IRNET_CPU_CONV=", env, " is not one of auto, popcount, lut, planes; using 'auto'");
  return kAlgoAuto;
}

std::atomic<int>& algo_slot() {
  static std::atomic<int> slot{initial_algo()};
  return slot;
}
const bool kAlgoChosen = (algo_slot(), true);

std::string cpu_conv_algorithm() { return kAlgoNames[algo_slot().load(std::memory_order_relaxed)]; }

// The algorithms that differ at the current level: the LUT kernel exists at "avx2" only,
// the planes kernel at "avx512" only.
std::vector<std::string> cpu_conv_algorithms() {
  if (std::strcmp(current()->name, "avx2") == 0 && lut_kernels() != nullptr) return {"auto", "popcount", "lut"};
  if (std::strcmp(current()->name, "avx512") == 0 && planes_kernels() != nullptr)
    return {"auto", "popcount", "planes"};
  return {"auto", "popcount"};
}

void set_cpu_conv_algorithm(const std::string& name) {
  const int i = algo_index(name);
  TORCH_CHECK(i >= 0, "irnet::set_cpu_conv_algorithm: expected one of auto, popcount, lut, planes, got '", name, "'");
  algo_slot().store(i, std::memory_order_relaxed);
}

// ---------------------------------------------------------------- pack_bits
template <class T>
using MaskFn = uint64_t (*)(const T*, int64_t);
// the level's NCHW block packer (LevelKernels::pack_block_f32) for float32, else null
template <class T>
using PackBlockFn = void (*)(const T*, int64_t, int64_t, int64_t, uint64_t*, int64_t);

// (N, C, *S) -> (N, *S, words), bit = (x < 0).
//  * channels innermost (stride(1) == 1, e.g. channels_last): each output word packs
//    64 consecutive values; any strides over N and S.
//  * otherwise (NCHW): on the contiguous (N, C, P) view, a 64-channel x 64-pixel
//    block is read row by row (one word of 64 pixel bits per channel, contiguous
//    loads) and then bit-transposed so that each word holds 64 channels of a pixel;
//    with fewer than 16 pixels per channel, each pixel's channels are gathered instead.
template <class T>
void pack_impl(const Tensor& x, Tensor& out, MaskFn<T> mask, PackBlockFn<T> block) {
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t words = core::num_words(C);
  const int64_t P = x.numel() / (N * C);
  uint64_t* o = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  if (x.stride(1) == 1 || C == 1) {
    const T* base = reinterpret_cast<const T*>(x.const_data_ptr());
    const int64_t sd = x.dim() - 2;
    std::vector<int64_t> sizes(x.sizes().begin() + 2, x.sizes().end());
    std::vector<int64_t> strides(x.strides().begin() + 2, x.strides().end());
    const int64_t sN = x.stride(0);
    at::parallel_for(0, N * P, std::max<int64_t>(1, 4096 / (words * 8)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        int64_t n = r / P, rem = r - n * P, off = n * sN;
        for (int64_t d = sd - 1; d >= 0; --d) {
          const int64_t i = rem % sizes[d];
          rem /= sizes[d];
          off += i * strides[d];
        }
        const T* src = base + off;
        uint64_t* dst = o + r * words;
        for (int64_t w = 0; w < words; ++w) {
          const int64_t c0 = w * core::kWordBits;
          dst[w] = mask(src + c0, std::min<int64_t>(core::kWordBits, C - c0));
        }
      }
    });
    return;
  }
  const Tensor xc = x.contiguous();
  const T* base = reinterpret_cast<const T*>(xc.const_data_ptr());
  if (P < 16) {
    // Few pixels per channel (e.g. a 3x3 weight): a 64x64 transpose would mostly move
    // zeros; gather each pixel's channel column into a buffer and pack it directly.
    // (From 16 pixels on, e.g. a 7x7 map, the transposed blocks below are faster.)
    at::parallel_for(0, N * P, std::max<int64_t>(1, 16384 / C), [&](int64_t b, int64_t e) {
      std::vector<T> col(static_cast<size_t>(C));
      for (int64_t r = b; r < e; ++r) {
        const int64_t n = r / P, p = r - n * P;
        const T* src = base + n * C * P + p;
        for (int64_t c = 0; c < C; ++c) col[c] = src[c * P];
        uint64_t* dst = o + r * words;
        for (int64_t w = 0; w < words; ++w) {
          const int64_t c0 = w * core::kWordBits;
          dst[w] = mask(col.data() + c0, std::min<int64_t>(core::kWordBits, C - c0));
        }
      }
    });
    return;
  }
  const int64_t pblocks = (P + 63) / 64;
  // grain: 16 blocks (64K values, ~10 us) per thread at least; a parallel region costs
  // a wake-up of the pool's threads (a few us while they spin between ops)
  at::parallel_for(0, N * words * pblocks, 16, [&](int64_t b, int64_t e) {
    alignas(64) uint64_t m[64];
    for (int64_t t = b; t < e; ++t) {
      const int64_t pb = t % pblocks, nw = t / pblocks;
      const int64_t w = nw % words, n = nw / words;
      const int64_t p0 = pb * 64, np = std::min<int64_t>(64, P - p0);
      const int64_t c0 = w * 64, nc = std::min<int64_t>(64, C - c0);
      const T* src = base + (n * C + c0) * P + p0;
      uint64_t* dst = o + (n * P + p0) * words + w;
      if (block) {
        block(src, P, nc, np, dst, words);
        continue;
      }
      for (int64_t c = 0; c < nc; ++c) m[c] = mask(src + c * P, np);
      for (int64_t c = nc; c < 64; ++c) m[c] = 0;
      core::transpose64(m);  // m[j] bit c = value (c0 + c, p0 + j) < 0
      for (int64_t j = 0; j < np; ++j) dst[j * words] = m[j];
    }
  });
}

Tensor pack_bits_cpu(const Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "irnet::pack_bits: expected a tensor of rank >= 2 (N, C, ...), got shape ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "irnet::pack_bits: expected a CPU tensor, got ", x.device());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "irnet::pack_bits: expected float32, float64, float16 or bfloat16, got ", st);
  std::vector<int64_t> shape;
  shape.push_back(x.size(0));
  for (int64_t d = 2; d < x.dim(); ++d) shape.push_back(x.size(d));
  shape.push_back(core::num_words(x.size(1)));
  Tensor out = at::empty(shape, x.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const LevelKernels* k = current();
  switch (st) {
    case at::kFloat: pack_impl<float>(x, out, k->neg_mask_f32, k->pack_block_f32); break;
    case at::kDouble: pack_impl<double>(x, out, k->neg_mask_f64, nullptr); break;
    case at::kHalf: pack_impl<uint16_t>(x, out, k->neg_mask_f16, nullptr); break;
    default: pack_impl<uint16_t>(x, out, k->neg_mask_bf16, nullptr); break;
  }
  return out;
}

// ---------------------------------------------------------------- XNOR conv / linear
// The contract says tail bits past C are 0 (pack_bits guarantees it); the reference
// ignores them anyway, so a packed input with stray tail bits is masked (copied)
// rather than silently counted.  Weight panels are always masked.
Tensor masked_tail(const Tensor& bits, int64_t channels) {
  const uint64_t mask = core::tail_mask(channels);
  if (mask == ~uint64_t(0) || bits.numel() == 0) return bits;
  const int64_t words = bits.size(-1), rows = bits.numel() / words;
  const uint64_t* p = reinterpret_cast<const uint64_t*>(bits.const_data_ptr<int64_t>());
  std::atomic<bool> dirty{false};
  at::parallel_for(0, rows, 1 << 16, [&](int64_t b, int64_t e) {
    uint64_t acc = 0;
    for (int64_t r = b; r < e; ++r) acc |= p[r * words + words - 1] & ~mask;
    if (acc) dirty = true;
  });
  if (!dirty) return bits;
  Tensor c = bits.clone();
  uint64_t* q = reinterpret_cast<uint64_t*>(c.data_ptr<int64_t>());
  for (int64_t r = 0; r < rows; ++r) q[r * words + words - 1] &= mask;
  return c;
}

void check_bits(const char* op, const char* name, const Tensor& t, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "irnet::", op, ": expected ", name,
              " to be int64 packed bits (from pack_bits), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "irnet::", op, ": expected ", name, " of rank ", dim, ", got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), "irnet::", op, ": expected ", name, " on the CPU, got ", t.device());
}

Tensor checked_scale(const char* op, const std::optional<Tensor>& scale, int64_t O) {
  if (!scale.has_value() || !scale->defined()) return Tensor();
  const Tensor& s = *scale;
  TORCH_CHECK(s.is_floating_point(), "irnet::", op, ": expected a floating-point scale, got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 1 && s.size(0) == O, "irnet::", op, ": expected scale of shape (", O,
              ",) (one per output channel), got ", s.sizes());
  TORCH_CHECK(s.device().is_cpu(), "irnet::", op, ": expected scale on the CPU, got ", s.device());
  return s.to(at::kFloat).contiguous();
}

// ---------------------------------------------------------------- weight re-layout
// The inner loop wants the weights as panels [O/nr][L][split][nr] (xnor_simd.h) plus
// the padding-correction table.  Building them reads w_bits once and writes twice its
// size: for a 512-channel 3x3 layer that is a good part of a batch-1 call.  Inference
// calls a layer with the same weight again and again, so the last layouts are kept:
// an entry is reused only if its copy of the weight bits is equal, word for word, to
// the w_bits of this call (a read of the weight: far cheaper than the re-layout, and
// safe whatever changed the weight in place), for the same level and geometry.
struct WeightLayout {
  Tensor panels, wrect;  // the popcount tile's
  Tensor wofs;           // the LUT kernel's table offsets (xnor_lut.h), int16 [opad][K]
  Tensor wlanes;         // the planes kernel's weight lanes (planes_weights), int64
};

struct LayoutEntry {
  const void* data = nullptr;  // w_bits data pointer (lookup hint; the copy decides)
  Tensor copy;                 // the weight bits the layout was built from
  const LevelKernels* level = nullptr;
  const LutKernels* lut = nullptr;  // set: the LUT layout
  const PlanesKernels* planes = nullptr;  // set: the planes layout
  int64_t O = 0, kh = 0, kw = 0, words = 0, C = 0;
  WeightLayout layout;
  uint64_t last_use = 0;
};

// Enough for several copies of a deep network (ResNet-34 has 32 binary convs): with the
// benchmarks' packed, fused, and channels_last copies of ResNet-20 (4 x 19 weights) in one
// process, 64 entries made a least-recently-used cycle in which every call missed.
constexpr size_t kLayoutCacheEntries = 256;
constexpr int64_t kLayoutCacheMaxWeightWords = int64_t(1) << 22;  // 32 MiB weights: not cached

std::mutex g_layout_mutex;
std::vector<LayoutEntry> g_layouts;
uint64_t g_layout_clock = 0;

WeightLayout build_layout(const Tensor& w_bits, const ConvProblem& P, const LevelKernels* k, const LutKernels* lut,
                          const PlanesKernels* planes) {
  const uint64_t* wsrc = reinterpret_cast<const uint64_t*>(w_bits.const_data_ptr<int64_t>());
  WeightLayout out;
  if (planes) {
    const PlanesLayout Y = planes_layout(P);
    const int64_t tiles = (P.O + Y.ob - 1) / Y.ob;
    out.wlanes = at::empty({tiles * Y.G.K * Y.ob}, w_bits.options());
    uint64_t* dst = reinterpret_cast<uint64_t*>(out.wlanes.data_ptr<int64_t>());
    at::parallel_for(0, tiles, std::max<int64_t>(1, 16384 / (Y.G.K * Y.ob)), [&](int64_t b, int64_t e) {
      planes_weights(wsrc, P, Y, b, e, dst);
    });
    return out;
  }
  if (lut) {
    const LutGeometry G = lut_geometry(P, lut->qv);
    const int64_t opad = (P.O + lut->ot - 1) / lut->ot * lut->ot;
    out.wofs = at::empty({opad * G.K}, w_bits.options().dtype(at::kShort));
    uint16_t* dst = reinterpret_cast<uint16_t*>(out.wofs.data_ptr<int16_t>());
    at::parallel_for(0, opad, std::max<int64_t>(1, 16384 / G.K), [&](int64_t b, int64_t e) {
      lut_weight_offsets(wsrc, P, G, b, e, dst);
    });
    return out;
  }
  const int64_t L = P.kh * P.kw * P.words;
  const int64_t npan = (P.O + k->nr - 1) / k->nr;
  out.panels = at::empty({npan * L * k->nr * k->split}, w_bits.options());
  out.wrect = at::empty({(P.kh + 1) * (P.kw + 1) * npan * k->nr}, w_bits.options().dtype(at::kInt));
  uint64_t* pdst = reinterpret_cast<uint64_t*>(out.panels.data_ptr<int64_t>());
  int32_t* rdst = out.wrect.data_ptr<int32_t>();
  at::parallel_for(0, npan, std::max<int64_t>(1, 8192 / (L * k->nr)), [&](int64_t b, int64_t e) {
    pack_weight_panels(wsrc, P.O, P.kh, P.kw, P.words, k->nr, k->split, b, e, pdst, rdst);
  });
  return out;
}

WeightLayout weight_layout(const Tensor& w_bits, const ConvProblem& P, const LevelKernels* k,
                           const LutKernels* lut = nullptr, const PlanesKernels* planes = nullptr) {
  const int64_t n = w_bits.numel();
  if (n > kLayoutCacheMaxWeightWords) return build_layout(w_bits, P, k, lut, planes);
  const void* data = w_bits.const_data_ptr();
  {
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    for (LayoutEntry& e : g_layouts) {
      if (e.data == data && e.level == k && e.lut == lut && e.planes == planes && e.O == P.O && e.kh == P.kh &&
          e.kw == P.kw &&
          e.words == P.words && e.C == P.C &&
          std::memcmp(e.copy.const_data_ptr(), data, size_t(n) * sizeof(int64_t)) == 0) {
        e.last_use = ++g_layout_clock;
        return e.layout;
      }
    }
  }
  WeightLayout built = build_layout(w_bits, P, k, lut, planes);
  LayoutEntry entry;
  entry.data = data;
  entry.copy = w_bits.clone();
  entry.level = k;
  entry.lut = lut;
  entry.planes = planes;
  entry.O = P.O, entry.kh = P.kh, entry.kw = P.kw, entry.words = P.words, entry.C = P.C;
  entry.layout = built;
  std::lock_guard<std::mutex> lock(g_layout_mutex);
  entry.last_use = ++g_layout_clock;
  for (LayoutEntry& e : g_layouts) {  // same weight buffer, new contents: replace
    if (e.data == data && e.level == k && e.lut == lut && e.planes == planes) {
      e = std::move(entry);
      return built;
    }
  }
  if (g_layouts.size() < kLayoutCacheEntries) {
    g_layouts.push_back(std::move(entry));
  } else {  // evict the least recently used
    size_t victim = 0;
    for (size_t i = 1; i < g_layouts.size(); ++i)
      if (g_layouts[i].last_use < g_layouts[victim].last_use) victim = i;
    g_layouts[victim] = std::move(entry);
  }
  return built;
}

// "auto": the LUT kernel for few input channels, where the popcount tile wastes most of
// each 64-bit word (16 channels: 3/4 of it) and the LUT kernel's 4-channel steps do not.
// But the LUT kernel computes whole 32-position vectors of the Wq-pitched output grid, so
// its share of useful positions (Ho*Wo over the vectors that cover an image's grid)
// counts too: small images waste a good part of it.  Interleaved A/B on the 2-core Zen 3
// of benchmarks/results (2 threads, packed input, lut vs popcount): 16@32 1.5x (b1) /
// 2.3x (b16), 32@16 1.0x / 1.36x, 16->32 stride 2 1.2x, 64@56 1.2x / 1.27x (channels_last
// 0.96-1.05x, whole ResNet-18 0.90-1.08x), but 64->128 stride 2 at 56 0.8-0.95x, 128@28
// 0.94x, 64@8 0.86x / 0.62x (benchmarks/bench_cpu_conv.py times both on every layer: its
// pop and lut columns).  So 33-64 channels only at stride 1, large maps, NCHW output.
bool prefers_lut(const ConvProblem& P, const LutGeometry& G) {
  const double useful = double(P.Ho * P.Wo) / double((G.Qn + 31) / 32 * 32);
  const bool stride1 = P.sh == 1 && P.sw == 1;
  return (P.C <= 32 && useful >= 0.6) || (P.C <= 64 && stride1 && !P.out_cl && useful >= 0.85);
}

// Whether a zero-padded copy of the input with `padded_pixels` positions per image is
// worth making (both kernels read one): not where the padding dwarfs the image and the
// output, e.g. a huge padding with a huge stride.
bool padded_copy_fits(const ConvProblem& P, int64_t padded_pixels) {
  return padded_pixels <= 4 * (P.H * P.W + P.Ho * P.Wo) + 1024;
}

// The LUT kernel for this problem, or nullptr for the popcount tile: at the AVX2 level
// only, for dots of at most kMaxLutSteps lookups (its 16-bit counts), where the padded
// planes stay within a few times the input and output (as for the popcount path's padded
// copy), and as the algorithm setting says.
const LutKernels* lut_for(const ConvProblem& P, const LevelKernels* k) {
  const int algo = algo_slot().load(std::memory_order_relaxed);
  if (algo == kAlgoPopcount || std::strcmp(k->name, "avx2") != 0) return nullptr;
  const LutKernels* lut = lut_kernels();
  if (lut == nullptr) return nullptr;
  const LutGeometry G = lut_geometry(P, lut->qv);
  if (G.K > kMaxLutSteps || !padded_copy_fits(P, G.S * G.plane)) return nullptr;
  return algo == kAlgoLut || prefers_lut(P, G) ? lut : nullptr;
}

// "auto" at the AVX-512 level: the planes kernel where its expected gain over the popcount
// tile,
//   gain = useful * (64 * words) / (G * L)
// (useful: the share of its computed grid positions that are real outputs; the second
// factor: the bits a tap reads in the popcount tile, whole 64-bit words, over those in
// the planes kernel, whole L-bit lanes) reaches 0.95 for NCHW output, 1.5 for
// channels_last (whose transposes cost the planes kernel more than the popcount tile's
// natural pixel-major stores).  Interleaved A/B, planes / popcount speed, 1 thread,
// thread CPU time, packed input, 3x3, pad 1, 2-core Xeon (Sapphire Rapids, AVX-512
// VPOPCNTDQ/BITALG), batch 1 / 16:
//   NCHW  16@32 (gain 4) 2.98 / 5.77; 32@16 (2) 1.81 / 2.62; 64@8 (1) 1.28 / 1.23;
//         16->32 s2 (3.6) 1.76 / 2.33; 32->64 s2 (1.6) 1.18 / 1.39; 128@32 (1) 1.17 / 1.27;
//         256@16 (1) 1.08 / 1.07; 512@8 (1) 1.05 / 1.07; 64@56 (1) 1.32 / 1.74;
//         64->128@56 s2 (0.96) 1.08 / 1.16; 128@28 (0.93) 0.97 / 1.06;
//         256@14 (0.875) 0.99 / 0.97; 512@7 (0.875) 0.96 / 0.97; 512@4 (0.67) 0.72 / 0.71;
//   channels_last, packed input  16@32 1.91 / 2.53; 32@16 1.42 / 1.67; 16->32 s2 1.50 /
//         1.81; 32->64 s2 1.12 / 1.02; 64@8 1.06 / 0.91; 128@32 0.94 / 0.84; 512@8 0.97 /
//         0.96; 64@56 0.93 / 0.78; 128@28 0.85 / 0.80;
//   channels_last, float input (packed by the planes kernel itself: a pass less)  16@32
//         2.65 / 3.01; 32@16 1.73 / 1.95; 64@8 1.16 / 1.06; 32->64 s2 1.43 / 1.57;
//         128@32 1.03 / 0.98; 512@8 1.01 / 0.92; 64@56 1.03 / 0.97; 128@28 0.85 / 0.96;
//         256@14 0.81 / 0.79.
// (A linear layer, one position per image, has useful = 1 / V: never.)
bool prefers_planes(const ConvProblem& P, const PlanesLayout& Y) {
  const double useful = double(P.Ho * P.Wo) / double(Y.vectors * Y.vec);
  const double gain = useful * double(64 * P.words) / double(Y.G.groups * Y.lane_bits);
  return gain >= (P.out_cl ? 1.5 : 0.95);
}

// The planes kernel for this problem, or nullptr: at the AVX-512 level only, where the
// CPU has BITALG, the padded planes stay within a few times the input and output, and as
// the algorithm setting says.
const PlanesKernels* planes_for(const ConvProblem& P, const LevelKernels* k) {
  const int algo = algo_slot().load(std::memory_order_relaxed);
  if ((algo != kAlgoAuto && algo != kAlgoPlanes) || std::strcmp(k->name, "avx512") != 0) return nullptr;
  const PlanesKernels* planes = planes_kernels();
  if (planes == nullptr) return nullptr;
  const PlanesLayout Y = planes_layout(P);
  if (!padded_copy_fits(P, Y.G.S * Y.G.plane)) return nullptr;
  return algo == kAlgoPlanes || prefers_planes(P, Y) ? planes : nullptr;
}

// Runs task(t, scratch) for t in [0, ntasks) on workers that take tasks one at a time
// from a shared counter rather than in static shares: on a shared machine a thread that
// loses its core for a while then does fewer tasks instead of holding up the call.  Each
// worker gets its own scratch from make_scratch().  A call of `macs` binary MACs uses at
// most one worker per kMinMacsPerWorker of them: a parallel region wakes the pool's
// threads, which can cost more than a small layer's whole compute.  (2-core Zen 3 VM,
// fused ResNet-20 at batch 1, whose binary layers have 2.4M MACs each, alternating
// processes: 1.06 ms with 2M, 1.21 ms with every call on both threads; 4M made a 7.2M-MAC
// layer, 128 channels at 7x7, 1.5x slower than two threads.)
constexpr double kMinMacsPerWorker = 2e6;

template <class MakeScratch, class Task>
void run_tasks(int64_t ntasks, double macs, const MakeScratch& make_scratch, const Task& task) {
  const int64_t by_work = std::max<int64_t>(1, static_cast<int64_t>(macs / kMinMacsPerWorker));
  const int64_t workers = std::min<int64_t>({at::get_num_threads(), ntasks, by_work});
  std::atomic<int64_t> next{0};
  auto worker = [&](int64_t, int64_t) {
    const auto scratch = make_scratch();
    for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < ntasks;
         t = next.fetch_add(1, std::memory_order_relaxed))
      task(t, scratch.get());
  };
  if (workers <= 1) {
    worker(0, 1);
  } else {
    at::parallel_for(0, workers, 1, worker);
  }
}

// Binary MACs of the problem (C * kh * kw per output value).
double conv_macs(const ConvProblem& P) {
  return double(P.N) * double(P.O) * double(P.Ho * P.Wo) * double(P.C * P.kh * P.kw);
}

// The LUT convolution (xnor_lut.h): nibble planes of the input (threads over plane
// rows), then tasks of (image, a run of output grid positions, a group of channels)
// handed out from a shared counter, as in run_conv.
void run_conv_lut(ConvProblem& P, const Tensor& w_bits, const LutKernels* lut) {
  const LutGeometry G = lut_geometry(P, lut->qv);
  const WeightLayout lay = weight_layout(w_bits, P, current(), lut);
  std::vector<int64_t> xoff(static_cast<size_t>(G.K));
  plane_offsets(P, G, xoff.data());
  std::vector<int32_t> kin(static_cast<size_t>(G.Qk));
  plane_kin(P, G, kin.data());
  const std::unique_ptr<uint8_t[]> planes(new uint8_t[static_cast<size_t>(G.total)]);
  const int64_t filled = P.N * G.image;
  std::memset(planes.get() + filled, 0x80, static_cast<size_t>(G.total - filled));  // slack: padding bytes
  const int64_t units = P.N * P.sh * G.Hq;
  at::parallel_for(0, units, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, G.groups * G.Wq * P.sw)),
                   [&](int64_t b, int64_t e) { lut->prep_planes(P, G, b, e, planes.get()); });
  LutProblem L;
  L.P = &P;
  L.G = G;
  L.planes = planes.get();
  L.xoff = xoff.data();
  L.wofs = reinterpret_cast<const uint16_t*>(lay.wofs.const_data_ptr<int16_t>());
  L.kin = kin.data();
  L.scale = P.scale ? P.scale : P.ones;
  const int64_t qb = 4 * lut->qv;  // grid positions per task
  const int64_t nq = (G.Qn + qb - 1) / qb;
  const int64_t otiles = (P.O + lut->ot - 1) / lut->ot;
  const int64_t threads = at::get_num_threads();
  int64_t groups = 1;
  if (P.N * nq < 4 * threads) groups = std::min<int64_t>(otiles, (4 * threads + P.N * nq - 1) / (P.N * nq));
  int64_t tpg = (otiles + groups - 1) / groups;  // channel tiles per group
  // channels_last output goes out in 8-channel transposes: groups of whole 8-channel blocks
  if (P.out_cl && lut->ot < 8) tpg = (tpg * lut->ot + 7) / 8 * 8 / lut->ot;
  groups = (otiles + tpg - 1) / tpg;
  const int64_t ntasks = P.N * nq * groups;
  const size_t scratch_bytes = static_cast<size_t>(lut->scratch_bytes(tpg * lut->ot));
  run_tasks(
      ntasks, conv_macs(P), [&] { return std::unique_ptr<unsigned char[]>(new unsigned char[scratch_bytes]); },
      [&](int64_t t, unsigned char* scratch) {
        const int64_t g = t % groups, nqi = t / groups;
        const int64_t n = nqi / nq, iq = nqi % nq;
        const int64_t o0 = g * tpg * lut->ot, o1 = std::min(P.O, (g + 1) * tpg * lut->ot);
        lut->conv_block(L, n, iq * qb, std::min(G.Qn, iq * qb + qb), o0, o1, scratch);
      });
}

// The planes kernel's image-independent tables (offsets, K_in, mask planes, vectors and
// their output runs) for the last few geometries: a network calls each layer shape again
// and again, and building them costs about as much as a small layer's batch-1 compute.
std::shared_ptr<const PlanesTables> planes_tables_for(const ConvProblem& P, const PlanesLayout& Y) {
  const std::array<int64_t, 11> key = {P.H, P.W, P.C, P.kh, P.kw, P.sh, P.sw, P.ph, P.pw, P.dh, P.dw};
  static std::mutex mutex;
  static std::vector<std::pair<std::array<int64_t, 11>, std::shared_ptr<const PlanesTables>>> cache;  // newest last
  std::lock_guard<std::mutex> lock(mutex);
  for (size_t i = 0; i < cache.size(); ++i)
    if (cache[i].first == key) {
      std::rotate(cache.begin() + i, cache.begin() + i + 1, cache.end());
      return cache.back().second;
    }
  auto tables = std::make_shared<PlanesTables>();
  planes_tables(P, Y, *tables);
  if (cache.size() == 32) cache.erase(cache.begin());
  cache.emplace_back(key, tables);
  return tables;
}

// The planes convolution (xnor_planes.h): L-bit lane planes of the input (threads over
// plane rows; from the packed bits, or from the float activations P.xf), then tasks of
// (image, a run of position vectors, a group of channels) as run_conv_lut.
void run_conv_planes(ConvProblem& P, const Tensor& w_bits, const PlanesKernels* pk) {
  const PlanesLayout Y = planes_layout(P);
  const PlaneGeometry& G = Y.G;
  const WeightLayout lay = weight_layout(w_bits, P, current(), nullptr, pk);
  const std::shared_ptr<const PlanesTables> tables = planes_tables_for(P, Y);
  const int64_t E = Y.lane_bits / 8;  // bytes per element
  const std::unique_ptr<uint8_t[]> planes(new uint8_t[static_cast<size_t>(G.total * E)]);
  const int64_t filled = P.N * G.image;
  std::memset(planes.get() + filled * E, 0, static_cast<size_t>((G.total - filled) * E));  // slack
  const int64_t units = P.N * P.sh * G.Hq;
  const int64_t unit_work = G.groups * G.Wq * P.sw * (P.xf ? Y.lane_bits : 1);
  at::parallel_for(0, units, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, unit_work)),
                   [&](int64_t b, int64_t e) { pk->prep_planes(P, Y, b, e, planes.get()); });
  PlanesProblem Q;
  Q.P = &P;
  Q.Y = Y;
  Q.planes = planes.get();
  Q.tables = planes_table_view(*tables);
  Q.w = reinterpret_cast<const uint64_t*>(lay.wlanes.const_data_ptr<int64_t>());
  Q.scale = P.scale ? P.scale : P.ones;
  const int64_t vb = 4 * Y.nv;  // vectors per task
  const int64_t nq = (Y.vectors + vb - 1) / vb;
  const int64_t otiles = (P.O + Y.ob - 1) / Y.ob;
  const int64_t threads = at::get_num_threads();
  int64_t groups = 1;
  if (P.N * nq < 4 * threads) groups = std::min<int64_t>(otiles, (4 * threads + P.N * nq - 1) / (P.N * nq));
  const int64_t tpg = (otiles + groups - 1) / groups;  // channel tiles per group (whole 8-channel blocks)
  groups = (otiles + tpg - 1) / tpg;
  const int64_t ntasks = P.N * nq * groups;
  const size_t scratch_bytes = static_cast<size_t>(pk->scratch_bytes(Y, tpg * Y.ob));
  run_tasks(
      ntasks, conv_macs(P), [&] { return std::unique_ptr<unsigned char[]>(new unsigned char[scratch_bytes]); },
      [&](int64_t t, unsigned char* scratch) {
        const int64_t g = t % groups, nqi = t / groups;
        const int64_t n = nqi / nq, iq = nqi % nq;
        const int64_t o0 = g * tpg * Y.ob, o1 = std::min(P.O, (g + 1) * tpg * Y.ob);
        pk->conv_block(Q, n, iq * vb, std::min(Y.vectors, iq * vb + vb), o0, o1, scratch);
      });
}

// Splits output pixels into blocks and, when there are too few blocks for the threads,
// the output-channel panels into groups too.  The tiles read the activations in place:
// from x itself (1x1, stride 1, no padding, unsplit level) or from one zero-padded
// stored-form copy of x made here (RowsLayout); conv_block's im2col rows (P.xs unset)
// are the fallback the C++ unit test also checks.
// planes: the caller's choice of the planes kernel (planes_for), or nullptr.
void run_conv(ConvProblem& P, const Tensor& w_bits, const Tensor& scale, const PlanesKernels* planes) {
  const LevelKernels* k = current();
  TORCH_CHECK(P.C * P.kh * P.kw < (int64_t(1) << 31), "irnet::xnor_conv2d/xnor_linear: expected fewer than 2^31 terms ",
              "per dot product (in_channels * kh * kw), got ", P.C * P.kh * P.kw);
  const int64_t L = P.kh * P.kw * P.words;
  const int64_t npan = (P.O + k->nr - 1) / k->nr;
  const int64_t opad = npan * k->nr;
  // per-channel factors padded to whole panels: the scale, or ones when there is none
  // (plain memory, not a tensor: a few dispatcher calls less on every small layer)
  std::vector<float> factors(static_cast<size_t>(opad), 0.0f);
  if (scale.defined()) {
    const float* sc = scale.const_data_ptr<float>();  // float32, contiguous (checked_scale)
    std::copy(sc, sc + P.O, factors.begin());
    P.scale = factors.data();
  } else {
    std::fill(factors.begin(), factors.begin() + P.O, 1.0f);
    P.ones = factors.data();
  }
  if (planes) {
    run_conv_planes(P, w_bits, planes);
    return;
  }
  if (const LutKernels* lut = lut_for(P, k)) {
    run_conv_lut(P, w_bits, lut);
    return;
  }
  const WeightLayout lay = weight_layout(w_bits, P, k);
  P.wpanel = reinterpret_cast<const uint64_t*>(lay.panels.const_data_ptr<int64_t>());
  P.wrect = lay.wrect.const_data_ptr<int32_t>();

  // Direct path (everything but the 1x1 / linear case, whose rows are the input pixels
  // already): the activations once as zero-padded stored-form rows, read in place by
  // the tiles, instead of an im2col row per output pixel (see conv_block).
  // (Not where the padding dwarfs the image and the output, e.g. a huge padding with a
  // huge stride: there the im2col rows of the output pixels are the smaller copy.)
  const bool in_place = P.kh == 1 && P.kw == 1 && P.sh == 1 && P.sw == 1 && P.ph == 0 && P.pw == 0 && k->split == 1;
  const RowsLayout RL = rows_layout(P, k->split);
  const bool padded_ok = padded_copy_fits(P, RL.Hp * RL.Wp);
  std::unique_ptr<uint64_t[]> xs_buf;  // every word written by prep_rows
  std::vector<int64_t> xoff;
  if (!in_place && padded_ok) {
    xoff.resize(static_cast<size_t>(L));
    rows_offsets(P, k->split, xoff.data());
    xs_buf.reset(new uint64_t[static_cast<size_t>(RL.total)]);
    uint64_t* xs = xs_buf.get();
    // a cheap copy (a few words per input pixel): threads only for big inputs, since
    // every parallel region costs a wake-up of all threads (a scheduler slice on a
    // busy machine)
    at::parallel_for(0, P.N * RL.Hp, std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(1, RL.row)),
                     [&](int64_t b, int64_t e) { k->prep_rows(P, b, e, xs); });
    P.xs = xs;
    P.xoff = xoff.data();
  }
  const int64_t M = P.N * P.Ho * P.Wo;
  // im2col: ~16 KiB of patch rows per block; direct: no patch rows, fixed blocks
  int64_t mb = P.xs ? 96 : std::clamp<int64_t>(16384 / (8 * L * k->split), 4 * k->mr, 256);
  mb = (mb + k->mr - 1) / k->mr * k->mr;
  const int64_t nbm = (M + mb - 1) / mb;
  const int64_t threads = at::get_num_threads();
  int64_t groups = 1;
  if (nbm < 4 * threads) groups = std::min<int64_t>(npan, (4 * threads + nbm - 1) / nbm);
  const int64_t ppg = (npan + groups - 1) / groups;
  groups = (npan + ppg - 1) / ppg;
  const size_t scratch_words = static_cast<size_t>(conv_scratch_words(P, mb));
  // (scratch uninitialized: conv_block writes every part of it before reading it)
  run_tasks(
      nbm * groups, conv_macs(P), [&] { return std::unique_ptr<uint64_t[]>(new uint64_t[scratch_words]); },
      [&](int64_t t, uint64_t* scratch) {
        const int64_t bm = t / groups, g = t % groups;
        k->conv_block(P, bm * mb, std::min(M, bm * mb + mb), g * ppg, std::min(npan, g * ppg + ppg), scratch);
      });
}

// Both packed operands must hold ceil(channels/64) words in their last dim; returns it.
// (x_bits null: a float input, only w_bits to check)
int64_t check_words(const char* op, const Tensor* x_bits, const char* x_unit, const Tensor& w_bits,
                    const char* w_unit, int64_t channels, const char* what) {
  const int64_t words = core::num_words(channels);
  if (x_bits)
    TORCH_CHECK(x_bits->size(-1) == words, "irnet::", op, ": expected x_bits with ", words, " words per ", x_unit,
                " for ", channels, " ", what, ", got shape ", x_bits->sizes());
  TORCH_CHECK(w_bits.size(-1) == words, "irnet::", op, ": expected w_bits with ", words, " words per ", w_unit,
              " for ", channels, " ", what, " (as x_bits), got shape ", w_bits.sizes());
  return words;
}

// The common end of both ops once P's shape is set: the bits past P.C are masked in
// both operands, then the one conv driver runs (a linear layer is a 1x1 conv).
// (x_tail_clean: x_bits come from pack_bits_cpu here, whose tail bits are 0: no scan)
// (The planes kernel reads only the in_channels bits of each pixel: no scan of x.)
// `planes`: planes_for(P, ...), or null.  x_bits undefined: the planes kernel packs the
// float activations P.xf itself.
void run_packed(ConvProblem& P, const PlanesKernels* planes, const Tensor& x_bits, const Tensor& w_bits,
                const Tensor& s, Tensor& out, bool x_tail_clean = false) {
  Tensor xc;  // alive until run_conv returns (P.x points into it)
  if (x_bits.defined()) {
    xc = x_tail_clean ? x_bits : planes ? x_bits.contiguous() : masked_tail(x_bits.contiguous(), P.C);
    P.x = reinterpret_cast<const uint64_t*>(xc.const_data_ptr<int64_t>());
  }
  const Tensor wc = masked_tail(w_bits.contiguous(), P.C);
  P.out = out.data_ptr<float>();
  run_conv(P, wc, s, planes);
}

// xnor_conv2d and (with `fused`) xnor_conv2d_fused: checks, the output, the problem.
// `into`, if given, is the output ((N, O, Ho, Wo) float32 in the layout channels_last
// asks for; checked), else a new tensor.
Tensor conv2d_cpu(const char* op, const Tensor& x, const Tensor& w_bits, const std::optional<Tensor>& scale,
                  int64_t in_channels, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                  bool channels_last, const FusedArgs* fused, const Tensor* into = nullptr) {
  // x: packed bits (N, H, W, words), or the float activations (N, C, H, W) themselves
  const bool float_in = x.is_floating_point();
  if (float_in) {
    TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "irnet::", op, ": expected float x_bits as the activations (N, C, ",
                "H, W) on the CPU, got shape ", x.sizes(), " on ", x.device());
    TORCH_CHECK(x.size(1) == in_channels, "irnet::", op, ": expected float activations with in_channels = ",
                in_channels, " channels, got shape ", x.sizes());
  } else {
    check_bits(op, "x_bits (N, H, W, words)", x, 4);
  }
  check_bits(op, "w_bits (C_out, kh, kw, words)", w_bits, 4);
  TORCH_CHECK(in_channels >= 1, "irnet::", op, ": expected in_channels >= 1, got ", in_channels);
  const int64_t words = check_words(op, float_in ? nullptr : &x, "pixel", w_bits, "tap", in_channels, "channels");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "irnet::", op, ": expected stride, padding, dilation of 2 ints each, got ", stride, ", ", padding, ", ",
              dilation);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              "irnet::", op, ": expected stride >= 1, dilation >= 1, padding >= 0, got stride ", stride,
              ", padding ", padding, ", dilation ", dilation);
  const int64_t kh = w_bits.size(1), kw = w_bits.size(2), O = w_bits.size(0);
  TORCH_CHECK(kh >= 1 && kw >= 1, "irnet::", op, ": expected a kernel of at least 1x1, got w_bits shape ",
              w_bits.sizes());
  const int64_t N = x.size(0), H = x.size(float_in ? 2 : 1), W = x.size(float_in ? 3 : 2);
  const int64_t Ho = core::conv_out_size(H, kh, stride[0], padding[0], dilation[0]);
  const int64_t Wo = core::conv_out_size(W, kw, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(H >= 1 && W >= 1 && Ho >= 1 && Wo >= 1, "irnet::", op, ": expected an output of at least 1x1, got ",
              Ho, "x", Wo, " (input ", H, "x", W, ", kernel ", kh, "x", kw, ", stride ", stride, ", padding ", padding,
              ", dilation ", dilation, ")");
  const Tensor s = checked_scale(op, scale, O);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor out;
  if (into) {
    TORCH_CHECK(into->scalar_type() == at::kFloat && into->device().is_cpu() &&
                    into->sizes() == at::IntArrayRef({N, O, Ho, Wo}) && into->is_contiguous(format),
                "irnet::", op, ": expected the output buffer as float32 CPU (", N, ", ", O, ", ", Ho, ", ", Wo, ") ",
                channels_last ? "channels_last" : "contiguous", ", got ", into->scalar_type(), " ", into->sizes());
    out = *into;
  } else {
    out = at::empty({N, O, Ho, Wo}, w_bits.options().dtype(at::kFloat).memory_format(format));
  }
  ConvProblem P;
  Tensor alpha, beta, residual;  // alive for the whole call
  if (fused) {
    for (const Tensor* t : {&fused->alpha, &fused->beta}) {
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == O,
                  "irnet::", op, ": expected alpha and beta as float32 CPU tensors of shape (", O, ",), got ",
                  t->scalar_type(), " ", t->sizes(), " on ", t->device());
    }
    TORCH_CHECK(!(fused->lo > fused->hi), "irnet::", op, ": expected act_min <= act_max, got ", fused->lo, " > ",
                fused->hi);
    alpha = fused->alpha.contiguous();
    beta = fused->beta.contiguous();
    P.alpha = alpha.const_data_ptr<float>();
    P.beta = beta.const_data_ptr<float>();
    if (fused->residual.has_value()) {
      const Tensor& r = *fused->residual;
      TORCH_CHECK(r.device().is_cpu() && r.scalar_type() == at::kFloat && r.sizes() == out.sizes(), "irnet::", op,
                  ": expected the residual as a float32 CPU tensor of the output's shape ", out.sizes(), ", got ",
                  r.scalar_type(), " ", r.sizes(), " on ", r.device());
      residual = r.contiguous(format);
      P.residual = residual.const_data_ptr<float>();
    }
    P.lo = static_cast<float>(fused->lo);
    P.hi = static_cast<float>(fused->hi);
  }
  if (out.numel() == 0) return out;
  P.out_cl = channels_last;
  P.N = N, P.H = H, P.W = W, P.words = words, P.C = in_channels;
  P.O = O, P.kh = kh, P.kw = kw;
  P.sh = stride[0], P.sw = stride[1], P.ph = padding[0], P.pw = padding[1], P.dh = dilation[0], P.dw = dilation[1];
  P.Ho = Ho, P.Wo = Wo;
  // float activations: packed here as pack_bits packs them (one op call less); the planes
  // kernel packs float32 NCHW or channels_last activations straight into its planes (one
  // pass less)
  const bool xf_nchw = float_in && x.scalar_type() == at::kFloat && x.is_contiguous();
  const bool xf_cl = float_in && x.scalar_type() == at::kFloat && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const PlanesKernels* planes = planes_for(P, current());
  if (planes && (xf_nchw || xf_cl)) {
    P.xf = x.const_data_ptr<float>();
    P.xf_cl = !xf_nchw;
    run_packed(P, planes, Tensor(), w_bits, s, out);
    return out;
  }
  run_packed(P, planes, float_in ? pack_bits_cpu(x) : x, w_bits, s, out, float_in);
  return out;
}

Tensor xnor_conv2d_cpu(const Tensor& x_bits, const Tensor& w_bits, const std::optional<Tensor>& scale,
                       int64_t in_channels, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       bool channels_last) {
  return conv2d_cpu("xnor_conv2d", x_bits, w_bits, scale, in_channels, stride, padding, dilation, channels_last,
                    nullptr);
}

Tensor xnor_conv2d_fused_cpu(const Tensor& x_bits, const Tensor& w_bits, const std::optional<Tensor>& scale,
                             int64_t in_channels, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, bool channels_last, const Tensor& alpha, const Tensor& beta,
                             const std::optional<Tensor>& residual, double act_min, double act_max) {
  const FusedArgs fused{alpha, beta, residual, act_min, act_max};
  return conv2d_cpu("xnor_conv2d_fused", x_bits, w_bits, scale, in_channels, stride, padding, dilation,
                    channels_last, &fused);
}

// A linear layer is the 1x1 convolution of N one-pixel images: the patch rows are the
// input rows themselves, (N, O, 1, 1) has the memory of (N, O).
Tensor xnor_linear_cpu(const Tensor& x_bits, const Tensor& w_bits, const std::optional<Tensor>& scale,
                       int64_t in_features) {
  const char* op = "xnor_linear";
  check_bits(op, "x_bits (N, words)", x_bits, 2);
  check_bits(op, "w_bits (C_out, words)", w_bits, 2);
  TORCH_CHECK(in_features >= 1, "irnet::xnor_linear: expected in_features >= 1, got ", in_features);
  const int64_t words = check_words(op, &x_bits, "row", w_bits, "row", in_features, "features");
  const int64_t N = x_bits.size(0), O = w_bits.size(0);
  const Tensor s = checked_scale(op, scale, O);
  Tensor out = at::empty({N, O}, x_bits.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  ConvProblem P;
  P.N = N, P.H = 1, P.W = 1, P.words = words, P.C = in_features;
  P.O = O, P.kh = 1, P.kw = 1, P.Ho = 1, P.Wo = 1;
  run_packed(P, planes_for(P, current()), x_bits, w_bits, s, out);
  return out;
}

// Binary peak probes: every thread runs a kernel's register tile over L1-resident
// operands; the rate of binary multiply-accumulates (one XOR-popcounted bit, or one
// looked-up channel of one position, = one MAC) over all threads, per second.
volatile uint64_t g_probe_sink = 0;

// probe(sink) runs one thread's share and returns its MACs
template <class Probe>
double probe_all_threads(const Probe& probe) {
  const int64_t threads = at::get_num_threads();
  std::atomic<int64_t> total{0};
  std::atomic<uint64_t> sink{0};
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint64_t s = 0;
      total += probe(&s);
      sink += s;
    }
  });
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  g_probe_sink = sink.load();  // keeps the probes' results alive
  return double(total.load()) / sec;
}

// The popcount tile of the current level, `words` words per dot.
double cpu_popcount_peak_bench(int64_t words, int64_t iters) {
  TORCH_CHECK(words >= 1 && words <= 256 && iters >= 1,
              "irnet::cpu_popcount_peak_bench: expected 1 <= words <= 256 and iters >= 1, got ", words, ", ", iters);
  const LevelKernels* k = current();
  return probe_all_threads([&](uint64_t* s) { return k->peak_probe(words, iters, s) * core::kWordBits; });
}

// The table-lookup tile (AVX2), `steps` lookup steps (4 input channels each) per dot.
double cpu_lut_peak_bench(int64_t steps, int64_t iters) {
  TORCH_CHECK(steps >= 1 && steps <= 4096 && iters >= 1,
              "irnet::cpu_lut_peak_bench: expected 1 <= steps <= 4096 and iters >= 1, got ", steps, ", ", iters);
  const LutKernels* lut = lut_kernels();
  TORCH_CHECK(lut != nullptr, "irnet::cpu_lut_peak_bench: the table-lookup kernel needs AVX2, which this CPU (or "
              "this build) does not have");
  return probe_all_threads([&](uint64_t* s) { return lut->peak_probe(steps, iters, s); });
}

// The planes tile (AVX-512), lanes of `lane_bits` (8, 16, 32, 64) channels, `steps`
// steps (one tap of one lane group each) per dot.
double cpu_planes_peak_bench(int64_t steps, int64_t iters, int64_t lane_bits) {
  TORCH_CHECK(steps >= 1 && steps <= 4096 && iters >= 1,
              "irnet::cpu_planes_peak_bench: expected 1 <= steps <= 4096 and iters >= 1, got ", steps, ", ", iters);
  TORCH_CHECK(lane_bits == 8 || lane_bits == 16 || lane_bits == 32 || lane_bits == 64,
              "irnet::cpu_planes_peak_bench: expected lane_bits of 8, 16, 32 or 64, got ", lane_bits);
  const PlanesKernels* pk = planes_kernels();
  TORCH_CHECK(pk != nullptr, "irnet::cpu_planes_peak_bench: the planes kernel needs AVX-512 with VPOPCNTDQ and ",
              "BITALG, which this CPU (or this build) does not have");
  return probe_all_threads([&](uint64_t* s) { return pk->peak_probe(int(lane_bits), steps, iters, s); });
}

}  // namespace

void xnor_conv2d_cpu_into(const Tensor& x, const Tensor& w_bits, const std::optional<Tensor>& scale,
                          int64_t in_channels, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool channels_last, const FusedArgs* fused, const Tensor& out) {
  conv2d_cpu(fused ? "xnor_conv2d_fused" : "xnor_conv2d", x, w_bits, scale, in_channels, stride, padding, dilation,
             channels_last, fused, &out);
}

}  // namespace cpu
}  // namespace irnet

TORCH_LIBRARY_IMPL(irnet, CPU, m) {
  m.impl("pack_bits", &irnet::cpu::pack_bits_cpu);
  m.impl("xnor_conv2d", &irnet::cpu::xnor_conv2d_cpu);
  m.impl("xnor_conv2d_fused", &irnet::cpu::xnor_conv2d_fused_cpu);
  m.impl("xnor_linear", &irnet::cpu::xnor_linear_cpu);
}

// SIMD-level controls of the CPU XNOR kernels (no tensors: plain functions).
TORCH_LIBRARY_FRAGMENT(irnet, m) {
  m.def("cpu_simd_level() -> str", &irnet::cpu::cpu_simd_level);
  m.def("cpu_simd_levels() -> str[]", &irnet::cpu::cpu_simd_levels);
  m.def("set_cpu_simd_level(str level) -> ()", &irnet::cpu::set_cpu_simd_level);
  m.def("cpu_conv_algorithm() -> str", &irnet::cpu::cpu_conv_algorithm);
  m.def("cpu_conv_algorithms() -> str[]", &irnet::cpu::cpu_conv_algorithms);
  m.def("set_cpu_conv_algorithm(str algorithm) -> ()", &irnet::cpu::set_cpu_conv_algorithm);
  m.def("cpu_popcount_peak_bench(int words, int iters) -> float", &irnet::cpu::cpu_popcount_peak_bench);
  m.def("cpu_lut_peak_bench(int steps, int iters) -> float", &irnet::cpu::cpu_lut_peak_bench);
  m.def("cpu_planes_peak_bench(int steps, int iters, int lane_bits=16) -> float",
        &irnet::cpu::cpu_planes_peak_bench);
}
