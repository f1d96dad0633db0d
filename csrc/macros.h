#pragma once
// KDFAST_HD marks per-element helpers compiled for both the CPU kernels and the CUDA kernels, so the
// CPU tests exercise the exact arithmetic the GPU runs.
#if defined(__CUDACC__)
#define KDFAST_HD __host__ __device__ __forceinline__
#else
#define KDFAST_HD inline
#endif
