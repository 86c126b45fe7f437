// irnet::xnor_conv2d, xnor_conv2d_fused and xnor_linear on CUDA, and the run-time choice
// between the two kernels that compute them.  NEVER RUN ON A GPU: compiled for
// sm_80/sm_90, statically checked (tests/test_cuda_static.py) and emulated on the host
// (csrc/tests/test_cuda_emulation.cpp); tests/test_cuda_ops.py holds the checks that will
// run them on a GPU.
//
// The kernels (bodies in csrc/core, one template each for fused / unfused and NCHW /
// channels_last output):
//   popc  CUDA cores, XNOR + popcount on 64-bit words: csrc/core/xnor_popc_conv.h
//   mma   1-bit tensor cores, mma.m16n8k256 AND + popcount: csrc/core/xnor_mma_conv.h
// Both give the same integer dot products and round the output in the same steps as the
// CPU kernel and the reference (csrc/core/conv_epilogue.h): the choice changes speed only.
// xnor_linear is the conv with H = W = kh = kw = 1.  Every launch is on the current
// stream and checked; no op synchronises with the host.
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <iterator>
#include <string>
#include <vector>

#include "common.cuh"
#include "core/xnor_mma_conv.h"
#include "core/xnor_popc_conv.h"
#include "cpu/xnor_cpu.h"
#include "device_exec.cuh"
#include "xnor_conv.cuh"

namespace irnet_cuda {
namespace {

namespace pc = irnet::core::popc_conv;
using irnet::core::GpuConvShape;

template <bool kFused, bool kChannelsLast>
__global__ void __launch_bounds__(pc::kThreads) xnor_popc_conv_kernel(const pc::Params p) {
  __shared__ pc::Shared sh;
  DeviceExec ex;
  pc::conv_block<kFused, kChannelsLast>(ex, sh, p, blockIdx.x, static_cast<int>(threadIdx.x));
}

void launch_popc_conv(const ConvCall& c, cudaStream_t stream) {
  const int64_t blocks = pc::grid_blocks(c.g);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "irnet::xnor_conv2d: output too large for one launch (",
              blocks, " blocks)");
  pc::Params p{};
  p.g = c.g;
  p.x = c.x;
  p.w = c.w;
  p.out = c.out;
  p.ctiles = pc::channel_tiles(c.g);
  with_epilogue(c.fused, c.channels_last, [&](auto fused, auto channels_last) {
    xnor_popc_conv_kernel<decltype(fused)::value, decltype(channels_last)::value>
        <<<static_cast<unsigned>(blocks), pc::kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------- algorithm choice
// "popc" / "mma" force a kernel; "auto" (the default, or IRNET_CUDA_CONV=auto|popc|mma
// when the library loads) picks per call by the rule of mma_conv::auto_prefers_mma
// (csrc/core/xnor_mma_conv.h: compute capability 8.x / 9.x, at least 2^22 binary MACs,
// moderate tile padding), a first guess from peak rates that the first GPU run's
// measurements (benchmarks/bench_cuda_conv.py times both paths) should replace.
const char* const kAlgoNames[] = {"auto", "popc", "mma"};
constexpr int kAlgoAuto = 0, kAlgoPopc = 1, kAlgoMma = 2;

int algo_index(const std::string& name) {
  for (size_t i = 0; i < std::size(kAlgoNames); ++i)
    if (name == kAlgoNames[i]) return static_cast<int>(i);
  return -1;
}

int initial_algo() {
  const char* env = std::getenv("IRNET_CUDA_CONV");
  if (env == nullptr || *env == '\0') return kAlgoAuto;
  const int i = algo_index(env);
  if (i >= 0) return i;
  TORCH_WARN("irnet: IRNET_CUDA_CONV=", env, " is not one of auto, popc, mma; using 'auto'");
  return kAlgoAuto;
}

std::atomic<int>& algo_slot() {
  static std::atomic<int> slot{initial_algo()};
  return slot;
}
const bool kAlgoChosen = (algo_slot(), true);  // decide (and warn) when the library loads

std::string cuda_conv_algorithm() { return kAlgoNames[algo_slot().load(std::memory_order_relaxed)]; }
std::vector<std::string> cuda_conv_algorithms() {
  return std::vector<std::string>(std::begin(kAlgoNames), std::end(kAlgoNames));
}
void set_cuda_conv_algorithm(const std::string& name) {
  const int i = algo_index(name);
  TORCH_CHECK(i >= 0, "irnet::set_cuda_conv_algorithm: expected one of auto, popc, mma, got '", name, "'");
  algo_slot().store(i, std::memory_order_relaxed);
}

bool use_mma(const GpuConvShape& g, const at::Tensor& on) {
  const int algo = algo_slot().load(std::memory_order_relaxed);
  if (algo == kAlgoPopc) return false;
  // cached device properties: no host synchronisation
  const int major = at::cuda::getDeviceProperties(on.device().index())->major;
  if (algo == kAlgoMma) {
    TORCH_CHECK(major >= 8, "irnet::xnor_conv2d: the 'mma' algorithm (set_cuda_conv_algorithm / IRNET_CUDA_CONV) ",
                "needs a GPU of compute capability 8.0 or newer; use 'popc' or 'auto' on this one");
    return true;
  }
  return irnet::core::mma_conv::auto_prefers_mma(g, major);
}

// ---------------------------------------------------------------- argument checks
// Shared by conv and linear: checks of the scale argument; returns it as float32.
c10::optional<at::Tensor> scale_f32(const char* op, const std::optional<at::Tensor>& scale, int64_t O,
                                    const at::Tensor& ref) {
  if (!scale.has_value() || !scale->defined()) return c10::nullopt;
  const at::Tensor& s = *scale;
  check_same_device(op, "scale", s, "x_bits", ref);
  check_floating(op, "scale", s);
  TORCH_CHECK(s.dim() == 1 && s.size(0) == O, "irnet::", op, ": expected scale of shape (", O,
              ",) (one entry per output channel), got shape ", s.sizes());
  return s.to(at::kFloat).contiguous();
}

// Int32 bound of the accumulators: kh * kw * Wd * 64 < 2^31.
void check_k_range(const char* op, int64_t taps, int64_t words) {
  TORCH_CHECK(taps * words * kWordBits <= std::numeric_limits<int32_t>::max(), "irnet::", op,
              ": expected kh*kw*64*ceil(C/64) < 2^31 (int32 accumulation), got ", taps, " taps of ", words, " words");
}

// Both packed operands: int64 CUDA tensors of rank `dim` on one device.
void check_packed_pair(const char* op, const at::Tensor& x_bits, const char* x_desc, const at::Tensor& w_bits,
                       const char* w_desc, int64_t dim) {
  check_cuda(op, "x_bits", x_bits);
  check_same_device(op, "w_bits", w_bits, "x_bits", x_bits);
  check_dtype(op, "x_bits", x_bits, at::kLong);
  check_dtype(op, "w_bits", w_bits, at::kLong);
  check_dim(op, x_desc, x_bits, dim);
  check_dim(op, w_desc, w_bits, dim);
}

// The folded-layer arguments of xnor_conv2d_fused: the CPU driver's struct (a torch-only header).
using irnet::cpu::FusedArgs;

// Runs the chosen kernel on checked, contiguous operands.
void run_conv(ConvCall& c, const at::Tensor& xb, const at::Tensor& wb) {
  c.x = reinterpret_cast<const uint64_t*>(xb.const_data_ptr<int64_t>());
  c.w = reinterpret_cast<const uint64_t*>(wb.const_data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (use_mma(c.g, xb)) {
    launch_mma_conv(c, xb, stream);
  } else {
    launch_popc_conv(c, stream);
  }
}

// xnor_conv2d and (with `fused`) xnor_conv2d_fused: checks, the output, the launch.
at::Tensor conv2d_cuda(const char* op, const at::Tensor& x_bits, const at::Tensor& w_bits,
                       const std::optional<at::Tensor>& scale, int64_t in_channels, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, bool channels_last, const FusedArgs* fused) {
  // float activations (N, C, H, W) in place of packed bits: packed here first
  if (x_bits.is_floating_point()) {
    check_cuda(op, "x_bits", x_bits);
    TORCH_CHECK(x_bits.dim() == 4 && x_bits.size(1) == in_channels, "irnet::", op,
                ": expected float x_bits as the activations (N, C, H, W) with in_channels = ", in_channels,
                " channels, got shape ", x_bits.sizes());
    return conv2d_cuda(op, pack_bits_cuda(x_bits), w_bits, scale, in_channels, stride, padding, dilation,
                       channels_last, fused);
  }
  check_packed_pair(op, x_bits, "x_bits (N, H, W, words)", w_bits, "w_bits (O, kh, kw, words)", 4);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "irnet::", op,
              ": expected stride, padding and dilation of 2 entries each, got ", stride, ", ", padding, ", ",
              dilation);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              "irnet::", op, ": expected stride >= 1, dilation >= 1, padding >= 0, got stride ", stride,
              ", padding ", padding, ", dilation ", dilation);
  // one rule with the CPU kernel: a dot over no channels is not a convolution
  TORCH_CHECK(in_channels >= 1, "irnet::", op, ": expected in_channels >= 1, got ", in_channels);
  const int64_t words = words_for(in_channels);
  TORCH_CHECK(x_bits.size(3) == words && w_bits.size(3) == words, "irnet::", op, ": expected ", words,
              " words per position for in_channels = ", in_channels, ", got x_bits ", x_bits.sizes(), " and w_bits ",
              w_bits.sizes());
  const int64_t N = x_bits.size(0), H = x_bits.size(1), W = x_bits.size(2);
  const int64_t O = w_bits.size(0), kh = w_bits.size(1), kw = w_bits.size(2);
  TORCH_CHECK(kh >= 1 && kw >= 1, "irnet::", op, ": expected a kernel of at least 1x1, got w_bits ", w_bits.sizes());
  // The kernel must fit the padded input (checked before the division: C++ division
  // truncates toward zero, so a negative span would otherwise give a size of 1).
  TORCH_CHECK(H + 2 * padding[0] - dilation[0] * (kh - 1) - 1 >= 0 &&
                  W + 2 * padding[1] - dilation[1] * (kw - 1) - 1 >= 0,
              "irnet::", op, ": kernel ", kh, "x", kw, " (dilation ", dilation, ") does not fit input ", H, "x", W,
              " padded by ", padding);
  const int64_t Ho = irnet::core::conv_out_size(H, kh, stride[0], padding[0], dilation[0]);
  const int64_t Wo = irnet::core::conv_out_size(W, kw, stride[1], padding[1], dilation[1]);
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "irnet::", op, ": kernel ", kh, "x", kw, " (dilation ", dilation,
              ") does not fit input ", H, "x", W, " padded by ", padding);
  check_k_range(op, kh * kw, words);
  TORCH_CHECK(stride[0] <= INT32_MAX && stride[1] <= INT32_MAX && padding[0] <= INT32_MAX &&
                  padding[1] <= INT32_MAX && dilation[0] <= INT32_MAX && dilation[1] <= INT32_MAX,
              "irnet::", op, ": stride, padding and dilation must fit in int32");
  const c10::cuda::CUDAGuard guard(x_bits.device());
  const auto scale32 = scale_f32(op, scale, O, x_bits);

  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor y = at::empty({N, O, Ho, Wo}, x_bits.options().dtype(at::kFloat).memory_format(format));
  ConvCall c{};
  at::Tensor alpha, beta, residual;  // alive for the whole call
  if (fused) {
    for (const at::Tensor* t : {&fused->alpha, &fused->beta}) {
      check_same_device(op, t == &fused->alpha ? "alpha" : "beta", *t, "x_bits", x_bits);
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == O, "irnet::", op,
                  ": expected alpha and beta as float32 tensors of shape (", O, ",), got ", t->scalar_type(), " ",
                  t->sizes());
    }
    TORCH_CHECK(!(fused->lo > fused->hi), "irnet::", op, ": expected act_min <= act_max, got ", fused->lo, " > ",
                fused->hi);
    alpha = fused->alpha.contiguous();
    beta = fused->beta.contiguous();
    c.out.alpha = alpha.const_data_ptr<float>();
    c.out.beta = beta.const_data_ptr<float>();
    if (fused->residual.has_value() && fused->residual->defined()) {
      const at::Tensor& r = *fused->residual;
      check_same_device(op, "residual", r, "x_bits", x_bits);
      TORCH_CHECK(r.scalar_type() == at::kFloat && r.sizes() == y.sizes(), "irnet::", op,
                  ": expected the residual as a float32 tensor of the output's shape ", y.sizes(), ", got ",
                  r.scalar_type(), " ", r.sizes());
      residual = r.contiguous(format);  // indexed like the output
      c.out.residual = residual.const_data_ptr<float>();
    }
    c.out.lo = static_cast<float>(fused->lo);
    c.out.hi = static_cast<float>(fused->hi);
  }
  if (y.numel() == 0) return y;
  const at::Tensor xb = x_bits.contiguous();
  const at::Tensor wb = w_bits.contiguous();
  c.g = irnet::core::make_gpu_conv_shape(N, in_channels, H, W, O, kh, kw, stride[0], stride[1], padding[0],
                                         padding[1], dilation[0], dilation[1]);  // its Ho, Wo: those above
  c.out.y = y.mutable_data_ptr<float>();
  c.out.scale = scale32.has_value() ? scale32->const_data_ptr<float>() : nullptr;
  c.fused = fused != nullptr;
  c.channels_last = channels_last;
  run_conv(c, xb, wb);
  return y;
}

}  // namespace

at::Tensor xnor_conv2d_cuda(const at::Tensor& x_bits, const at::Tensor& w_bits, const std::optional<at::Tensor>& scale,
                            int64_t in_channels, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, bool channels_last) {
  return conv2d_cuda("xnor_conv2d", x_bits, w_bits, scale, in_channels, stride, padding, dilation, channels_last,
                     nullptr);
}

at::Tensor xnor_conv2d_fused_cuda(const at::Tensor& x_bits, const at::Tensor& w_bits,
                                  const std::optional<at::Tensor>& scale, int64_t in_channels, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, bool channels_last,
                                  const at::Tensor& alpha, const at::Tensor& beta,
                                  const std::optional<at::Tensor>& residual, double act_min, double act_max) {
  const FusedArgs fused{alpha, beta, residual, act_min, act_max};
  return conv2d_cuda("xnor_conv2d_fused", x_bits, w_bits, scale, in_channels, stride, padding, dilation,
                     channels_last, &fused);
}

at::Tensor xnor_linear_cuda(const at::Tensor& x_bits, const at::Tensor& w_bits, const std::optional<at::Tensor>& scale,
                            int64_t in_features) {
  const char* op = "xnor_linear";
  check_packed_pair(op, x_bits, "x_bits (N, words)", w_bits, "w_bits (O, words)", 2);
  TORCH_CHECK(in_features >= 1, "irnet::xnor_linear: expected in_features >= 1, got ", in_features);
  const int64_t words = words_for(in_features);
  TORCH_CHECK(x_bits.size(1) == words && w_bits.size(1) == words, "irnet::xnor_linear: expected ", words,
              " words per row for in_features = ", in_features, ", got x_bits ", x_bits.sizes(), " and w_bits ",
              w_bits.sizes());
  check_k_range(op, 1, words);
  const int64_t N = x_bits.size(0), O = w_bits.size(0);
  const c10::cuda::CUDAGuard guard(x_bits.device());
  const auto scale32 = scale_f32(op, scale, O, x_bits);

  at::Tensor y = at::empty({N, O}, x_bits.options().dtype(at::kFloat));
  if (y.numel() == 0) return y;
  const at::Tensor xb = x_bits.contiguous();
  const at::Tensor wb = w_bits.contiguous();
  // (N, words) = (N, 1, 1, words); (O, words) = (O, 1, 1, words); y (N, O) = (N, O, 1, 1).
  ConvCall c{};
  c.g = irnet::core::make_gpu_conv_shape(N, in_features, 1, 1, O, 1, 1, 1, 1, 0, 0, 1, 1);
  c.out.y = y.mutable_data_ptr<float>();
  c.out.scale = scale32.has_value() ? scale32->const_data_ptr<float>() : nullptr;
  run_conv(c, xb, wb);
  return y;
}

}  // namespace irnet_cuda

TORCH_LIBRARY_IMPL(irnet, CUDA, m) {
  m.impl("xnor_conv2d", &irnet_cuda::xnor_conv2d_cuda);
  m.impl("xnor_conv2d_fused", &irnet_cuda::xnor_conv2d_fused_cuda);
  m.impl("xnor_linear", &irnet_cuda::xnor_linear_cuda);
}

// The CUDA conv algorithm setting (no tensors: plain functions; irnet.ops.controls wraps them).
TORCH_LIBRARY_FRAGMENT(irnet, m) {
  m.def("cuda_conv_algorithm() -> str", &irnet_cuda::cuda_conv_algorithm);
  m.def("cuda_conv_algorithms() -> str[]", &irnet_cuda::cuda_conv_algorithms);
  m.def("set_cuda_conv_algorithm(str algorithm) -> ()", &irnet_cuda::set_cuda_conv_algorithm);
}
