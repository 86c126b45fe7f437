// The device execution policy of irnet's CUDA kernel bodies (csrc/core/xnor_popc_conv.h,
// csrc/core/xnor_mma_conv.h): each primitive the bodies use, as the GPU instruction.  The
// host tests run the same bodies with csrc/tests/warp_emulator.h, whose primitives
// emulate these (a barrier, cp.async landing at any point before its wait, the warp's mma
// with the PTX-documented semantics).
#pragma once

#include <cstdint>

namespace irnet_cuda {

struct DeviceExec {
  __device__ __forceinline__ void sync() const { __syncthreads(); }

  template <class T>
  __device__ __forceinline__ T ldg(const T* p) const {
    return __ldg(p);
  }

  // cp.async of 8 / 16 bytes global -> shared; valid == false writes zeros (src-size 0:
  // nothing is read, src need only be a valid address).
  __device__ __forceinline__ void cp_async8(uint32_t* dst, const void* src, bool valid) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 8 : 0) : "memory");
#else
    __trap();
#endif
  }
  __device__ __forceinline__ void cp_async16(uint32_t* dst, const void* src, bool valid) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
#else
    __trap();
#endif
  }
  __device__ __forceinline__ void cp_async_commit() const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
  }
  // all but the `pending` most recent groups of this thread have landed
  template <int pending>
  __device__ __forceinline__ void cp_async_wait() const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
#endif
  }

  // d += A AND-popc B for the warp's 16x8x256 tile (fragments: core/mma_b1_fragments.h).
  // sm_80 / sm_90: BMMA.168256.AND.POPC.  (ptxas emulates it with IMMA on sm_100+; the
  // `auto` choice keeps those GPUs on the CUDA-core path.)
  __device__ __forceinline__ void mma_b1_and_popc(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
  }
};

}  // namespace irnet_cuda
