// Shared helpers of irnet's CUDA kernels (csrc/cuda/*.cu): argument checks with
// clear messages, launch sizing and the sign predicate.
//
// STATUS: compiled for sm_80 / sm_90 and statically checked (ptxas register/spill
// report, cuobjdump SASS) on a machine with no GPU.  None of this code has ever run on
// a GPU; tests/test_cuda_ops.py holds the checks that will exercise it on one.
//
// The bit layout is the one of csrc/irnet.cpp and csrc/core/bitpack.h: a float tensor
// (N, C, *S) packs to int64 words (N, *S, ceil(C/64)); channel c -> word c/64, bit
// c%64; bit = (x < 0).  The torch-free layout helpers (num_words, tail_mask,
// popcount64, is_negative, conv_out_size) come from csrc/core and are shared with the CPU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>

#include "core/bitpack.h"
#include "core/conv_geometry.h"

namespace irnet_cuda {

using irnet::core::kWordBits;
constexpr unsigned kFullMask = 0xffffffffu;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t words_for(int64_t channels) { return irnet::core::num_words(channels); }

// Grid size for a grid-stride loop over `work` items, `threads` per block.  The cap
// keeps gridDim.x far below its 2^31-1 limit; the loops cover the rest.
inline unsigned grid_for(int64_t work, int threads, int64_t cap = int64_t(1) << 20) {
  int64_t blocks = ceil_div(work, threads);
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

// ---------------------------------------------------------------- argument checks
// Every user-facing error names the op, what was expected and what came.
inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), "irnet::", op, ": expected ", name, " to be a tensor, got an undefined tensor");
  TORCH_CHECK(t.is_cuda(), "irnet::", op, ": expected ", name, " to be a CUDA tensor, got a tensor on ", t.device());
}

// `t` must be on the same CUDA device as `ref` (named ref_name).
inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                              const at::Tensor& ref) {
  check_cuda(op, name, t);
  TORCH_CHECK(t.device() == ref.device(), "irnet::", op, ": expected ", name, " on ", ref.device(), " (the device of ",
              ref_name, "), got ", t.device());
}

inline bool is_supported_float(at::ScalarType s) {
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(is_supported_float(t.scalar_type()), "irnet::", op, ": expected ", name,
              " to be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, "irnet::", op, ": expected ", name, " of dtype ", want, ", got ",
              t.scalar_type());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dims) {
  TORCH_CHECK(t.dim() == dims, "irnet::", op, ": expected ", name, " to have ", dims, " dimensions, got shape ",
              t.sizes());
}

// k and t of EDE: one-element floating tensors on the device of `ref`.
inline void check_ede_param(const char* op, const char* name, const at::Tensor& p, const char* ref_name,
                            const at::Tensor& ref) {
  check_same_device(op, name, p, ref_name, ref);
  check_floating(op, name, p);
  TORCH_CHECK(p.numel() == 1, "irnet::", op, ": expected ", name, " to be a 0-dim (one-element) tensor, got shape ",
              p.sizes());
}

// Checked k or t, converted to `want` (the op-math type of the kernel) and contiguous,
// so that a kernel reads it from device memory: no .item(), no host synchronisation
// (the conversion, when needed, is a device-side copy on the current stream).
inline at::Tensor ede_param(const char* op, const char* name, const at::Tensor& p, const char* ref_name,
                            const at::Tensor& ref, at::ScalarType want) {
  check_ede_param(op, name, p, ref_name, ref);
  return p.reshape({1}).to(want).contiguous();
}

// ---------------------------------------------------------------- device helpers
// sign bit of the layout: 1 iff v < 0 (so -0.0 and NaN give 0 = +1).  The compare is
// done in the op-math type (float for half/bfloat16, an exact widening; double for
// double, so a tiny negative double is never flushed to -0.0 first).
template <typename scalar_t>
__device__ __forceinline__ bool sign_bit(scalar_t v) {
  using opmath_t = at::opmath_type<scalar_t>;
  return irnet::core::is_negative(static_cast<opmath_t>(v));
}

// ---------------------------------------------------------------- cross-file entry points
// pack_bits on CUDA (csrc/cuda/pack_bits.cu); libra_pb_pack reuses it on v.
at::Tensor pack_bits_cuda(const at::Tensor& x);

}  // namespace irnet_cuda
