#pragma once
// KDFAST_HD marks per-element helpers compiled for both the CPU kernels and the CUDA kernels, so the
// CPU tests exercise the exact arithmetic the GPU runs.
#if defined(__CUDACC__)
#define KDFAST_HD __host__ __device__ __forceinline__
#define KDFAST_UNROLL _Pragma("unroll")
#else
#define KDFAST_HD inline
#define KDFAST_UNROLL _Pragma("GCC unroll 8")
#endif

#include <cmath>

namespace kdfast {

// Read-modify-write helpers for the block code shared by the CUDA kernels, the CPU kernels and the host
// emulation of the CUDA blocks: atomics on the GPU; plain updates on the host, where one thread at a time
// runs a block's phase (CPU kernels own their output rows; the emulation interleaves threads, never races).
template <typename T>
KDFAST_HD void shared_add(T* target, T value) {
#if defined(__CUDA_ARCH__)
  atomicAdd(target, value);
#else
  *target += value;
#endif
}

KDFAST_HD void shared_min(int* target, int value) {
#if defined(__CUDA_ARCH__)
  atomicMin(target, value);
#else
  if (value < *target) *target = value;
#endif
}

KDFAST_HD void shared_max(int* target, int value) {
#if defined(__CUDA_ARCH__)
  atomicMax(target, value);
#else
  if (value > *target) *target = value;
#endif
}

// max that ignores NaN (IEEE maxNum: fmaxf on the GPU, std::fmax on the CPU), so every backend takes the
// same maximum of a map that holds NaN.
KDFAST_HD float max_ignoring_nan(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}

}  // namespace kdfast
