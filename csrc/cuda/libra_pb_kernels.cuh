// The CUDA kernels of Libra-PB (forward and closed-form backward), torch-free so that
// the same source compiles twice: by nvcc into irnet._C (csrc/cuda/libra_ede.cu launches
// them) and, as host C++, into the ctest csrc/tests/test_libra_pb_emulation.cpp, which
// runs every CUDA thread of a block as a fiber (csrc/tests/cuda_host_emulation.h) and
// compares with the CPU kernel's rule.
//
// One block of kLanes = 256 threads per output channel.  The arithmetic is the shared
// rule of csrc/core/libra_pb.h; what is CUDA-specific is only BlockLanes, the block's
// way of computing the rule's canonical sums, which gives the same bits as the CPU's
// SerialLanes because it adds the same numbers in the same order:
//   thread j is lane j: it adds the terms i = j, j + 256, j + 512, ... from +0.0;
//   the 256 partials go to shared memory; warp 0 folds them to 32 (fold_columns) and
//   runs the 5 levels of the tree (tree_step), __syncwarp between levels.
// Launch with blockDim.x == kLanes exactly (the lane count is part of the sum's order).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/common.h"
#include "core/libra_pb.h"

namespace irnet_cuda {
namespace libra {

using ::irnet::core::libra_pb::kFoldLanes;
using ::irnet::core::libra_pb::kLanes;

// The canonical sums of core/libra_pb.h, one lane per thread of the block.  `partials`
// is a __shared__ array of kLanes doubles (2 * kLanes for sum_pair).  Every thread of the
// block must call sum / sum_pair (they contain __syncthreads), with the same n.
struct BlockLanes {
  double* partials;
  int lane;  // threadIdx.x

  // Combines the partials this block's threads stored at p[0..kLanes) (in place, in the
  // canonical order) after the barrier; the caller reads p[0] after the next barrier.
  __device__ __forceinline__ void combine(double* p) const {
    if (lane < kFoldLanes) {
      ::irnet::core::libra_pb::fold_columns(p, lane);
      for (int offset = kFoldLanes / 2; offset > 0; offset >>= 1) {
        __syncwarp();
        ::irnet::core::libra_pb::tree_step(p, lane, offset);
      }
    }
  }

  template <class Term>
  __device__ __forceinline__ double sum(int64_t n, Term term) const {
    double acc = 0.0;
    for (int64_t i = lane; i < n; i += kLanes) acc = ::irnet::core::libra_pb::add_rn(acc, term(i));
    __syncthreads();  // every thread has read the previous sum's result out of partials
    partials[lane] = acc;
    __syncthreads();
    combine(partials);
    __syncthreads();
    return partials[0];
  }

  // Two sums of one sweep (term returns both through a and b), each in the canonical order.
  template <class Term>
  __device__ __forceinline__ void sum_pair(int64_t n, Term term, double* sum_a, double* sum_b) const {
    double acc_a = 0.0, acc_b = 0.0;
    for (int64_t i = lane; i < n; i += kLanes) {
      double a, b;
      term(i, &a, &b);
      acc_a = ::irnet::core::libra_pb::add_rn(acc_a, a);
      acc_b = ::irnet::core::libra_pb::add_rn(acc_b, b);
    }
    __syncthreads();
    partials[lane] = acc_a;
    partials[kLanes + lane] = acc_b;
    __syncthreads();
    combine(partials);
    combine(partials + kLanes);
    __syncthreads();
    *sum_a = partials[0];
    *sum_b = partials[kLanes];
  }

  template <class F>
  __device__ __forceinline__ void for_each(int64_t n, F f) const {
    for (int64_t i = lane; i < n; i += kLanes) f(i);
  }
};

// Libra-PB forward, block o = output channel o of w (O, n): v, wb (skipped when
// wb == nullptr: libra_pb_pack), inv_sigma[o], scale[o] by the shared rule.  A channel
// with a NaN or Inf weight gets NaN outputs and, when nonfinite_channel != nullptr,
// o + 1 stored there (a plain store: any one of several such channels may win).  That
// pointer is mapped pinned host memory that the op reads without a synchronisation.
template <typename scalar_t>
__global__ void __launch_bounds__(kLanes)
libra_pb_kernel(const scalar_t* __restrict__ w, scalar_t* __restrict__ wb, scalar_t* __restrict__ v,
                scalar_t* __restrict__ inv_sigma, scalar_t* __restrict__ scale, int64_t n,
                volatile int* nonfinite_channel) {
  namespace lp = ::irnet::core::libra_pb;
  __shared__ double partials[kLanes];
  const int64_t o = blockIdx.x;
  const BlockLanes lanes{partials, static_cast<int>(threadIdx.x)};
  const lp::ChannelResult<scalar_t> r =
      lp::standardize_channel<scalar_t>(w + o * n, wb == nullptr ? nullptr : wb + o * n, v + o * n, n, lanes);
  if (threadIdx.x == 0) {
    inv_sigma[o] = r.inv_sigma;
    scale[o] = r.scale;
    if (r.status == lp::ChannelStatus::kNonFinite && nonfinite_channel != nullptr)
      *nonfinite_channel = static_cast<int>(o) + 1;
  }
}

__device__ __forceinline__ float dev_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dev_tanh(double x) { return tanh(x); }

// EDE derivative with the reference's order of operations:
//   grad * k * t * (1 - tanh(x * t)^2)        (in op-math precision: float or double)
template <typename opmath_t>
__device__ __forceinline__ opmath_t ede(opmath_t grad, opmath_t x, opmath_t k, opmath_t t) {
  const opmath_t th = dev_tanh(x * t);
  return grad * k * t * (opmath_t(1) - th * th);
}

// Libra-PB backward (closed form), block o = output channel o over its n weights:
//   g_i    = (grad_i * s) * k * t * (1 - tanh(t v_i)^2)           (EDE through sign, times scale)
//   grad_w = inv_sigma * (g - mean(g) - v * sum(g v) / max(n - 1, 1))
// (the Jacobian of v = (w - mean) / std_unbiased applied to g).  The sums are the
// canonical double sums of BlockLanes (the result does not depend on the block size);
// tanh is the device's, so this agrees with the CPU's backward to rounding, not to the bit.
template <typename scalar_t, typename opmath_t>
__global__ void __launch_bounds__(kLanes)
libra_pb_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ v,
                         const opmath_t* __restrict__ inv_sigma, const opmath_t* __restrict__ scale,
                         const opmath_t* __restrict__ kp, const opmath_t* __restrict__ tp,
                         scalar_t* __restrict__ out, int64_t n) {
  __shared__ double partials[2 * kLanes];
  const int64_t o = blockIdx.x;
  const scalar_t* go = grad + o * n;
  const scalar_t* vo = v + o * n;
  const opmath_t s = scale[o];
  const opmath_t k = *kp;
  const opmath_t t = *tp;
  const BlockLanes lanes{partials, static_cast<int>(threadIdx.x)};
  const auto g_of = [&](int64_t i) { return ede(static_cast<opmath_t>(go[i]) * s, static_cast<opmath_t>(vo[i]), k, t); };

  double sum_g = 0.0, sum_gv = 0.0;
  lanes.sum_pair(
      n,
      [&](int64_t i, double* a, double* b) {
        const double g = static_cast<double>(g_of(i));
        *a = g;
        *b = g * static_cast<double>(static_cast<opmath_t>(vo[i]));
      },
      &sum_g, &sum_gv);
  const double mean_g = sum_g / static_cast<double>(n);
  const double coef = sum_gv / static_cast<double>(n > 1 ? n - 1 : 1);
  const double isg = static_cast<double>(inv_sigma[o]);

  scalar_t* oo = out + o * n;
  lanes.for_each(n, [&](int64_t i) {
    const double g = static_cast<double>(g_of(i));
    oo[i] = static_cast<scalar_t>(isg * (g - mean_g - static_cast<double>(static_cast<opmath_t>(vo[i])) * coef));
  });
}

}  // namespace libra
}  // namespace irnet_cuda
