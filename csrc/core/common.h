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
