// irnet core: portable helpers shared by the CPU kernels (csrc/cpu) and the CUDA
// kernels (csrc/cuda).  Torch-free: only the C++ standard library.
#pragma once

#include <cstdint>

// IRNET_HD marks a function callable from both host and device code.
#if defined(__CUDACC__)
#define IRNET_HD __host__ __device__
#define IRNET_INLINE __forceinline__
#else
#define IRNET_HD
#if defined(__GNUC__) || defined(__clang__)
#define IRNET_INLINE inline __attribute__((always_inline))
#else
#define IRNET_INLINE inline
#endif
#endif

// IRNET_KERNEL_BODY marks the body of a CUDA kernel written as a template over an
// execution policy (csrc/core/xnor_*_conv.h): device code under nvcc (its __global__
// wrapper passes the device policy), plain host code under a host compiler, where the
// C++ tests run the same body with an emulating policy (csrc/tests/warp_emulator.h).
#if defined(__CUDACC__)
#define IRNET_KERNEL_BODY __device__ __forceinline__
#else
#define IRNET_KERNEL_BODY inline
#endif

// IRNET_UNROLL: full unrolling of a loop with a constant trip count in device code (a
// register array indexed by such a loop stays in registers only when it is unrolled).
#if defined(__CUDACC__)
#define IRNET_UNROLL _Pragma("unroll")
#else
#define IRNET_UNROLL
#endif
