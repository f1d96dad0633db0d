#pragma once
// The top-k CUDA kernels, thin shells over topk_block.h, free of ATen so that scripts/check_cuda_build.py
// compiles them alone in seconds (registers, spills, SASS) on machines without a GPU. grid.y is a unit
// (offset by u0 when the wrapper tiles more than 65535 units), grid.x splits the unit's values.
#include <cstdint>

#include "topk_threshold/topk_block.h"

namespace kdfast {

constexpr int kTopkThreads = 256;
constexpr int kTopkMaxBins = 1 << 11;

__global__ void __launch_bounds__(kTopkThreads)
    radix_histogram_kernel(const float* __restrict__ data, const __grid_constant__ UnitView v, int64_t u0,
                           const __grid_constant__ RadixPass p, unsigned long long* __restrict__ hist,
                           unsigned int* nonfinite) {
  __shared__ int local[kTopkMaxBins];
  const int64_t u = u0 + blockIdx.y;
  histogram_clear(local, p.bins, threadIdx.x, blockDim.x);
  __syncthreads();
  histogram_count(data, v, u, (int64_t)blockIdx.x * blockDim.x + threadIdx.x, (int64_t)gridDim.x * blockDim.x, p,
                  local, nonfinite);
  __syncthreads();
  histogram_flush(local, hist + u * p.bins, p.bins, threadIdx.x, blockDim.x);
}

// One block per unit (grid.x): pick the digit, then clear the histogram row for the next pass.
__global__ void radix_select_kernel(unsigned long long* __restrict__ hist, int shift, int bins, uint32_t* prefix,
                                    uint32_t* mask, long long* remaining, int64_t u0) {
  const int64_t u = u0 + blockIdx.x;
  unsigned long long* row = hist + u * bins;
  if (threadIdx.x == 0) select_digit(row, shift, bins, prefix, mask, remaining, u);
  __syncthreads();
  clear_row(row, bins, threadIdx.x, blockDim.x);
}

__global__ void sample_kernel(const float* __restrict__ data, const __grid_constant__ UnitView v, int64_t u0,
                              int64_t size, float* __restrict__ out) {
  const int64_t u = u0 + blockIdx.x;
  sample_values(data, v, u, size, out + u * size, threadIdx.x, blockDim.x);
}

__global__ void __launch_bounds__(kTopkThreads)
    candidates_kernel(const float* __restrict__ data, const __grid_constant__ UnitView v, int64_t u0,
                      const float* __restrict__ pivots, unsigned long long* __restrict__ counts,
                      float* __restrict__ candidates, int64_t cap, unsigned int* nonfinite) {
  const int64_t u = u0 + blockIdx.y;
  collect_candidates(data, v, u, (int64_t)blockIdx.x * blockDim.x + threadIdx.x, (int64_t)gridDim.x * blockDim.x,
                     float_order_key(pivots[u]), &counts[u], candidates + u * cap, cap, nonfinite);
}

// The flat layout's one full read: a 1-D grid-stride loop over the whole array in 16-B vectors.
__global__ void __launch_bounds__(kTopkThreads)
    candidates_flat_kernel(const float* __restrict__ data, const __grid_constant__ FlatView v,
                           const float* __restrict__ pivots, unsigned long long* __restrict__ counts,
                           float* __restrict__ candidates, int64_t cap, unsigned int* nonfinite) {
  collect_candidates_flat(data, v, (int64_t)blockIdx.x * blockDim.x + threadIdx.x, (int64_t)gridDim.x * blockDim.x,
                          pivots, counts, candidates, cap, nonfinite);
}

__global__ void __launch_bounds__(kTopkThreads)
    gather_greater_kernel(const float* __restrict__ data, const __grid_constant__ UnitView v, int64_t u0,
                          const uint32_t* __restrict__ prefix, unsigned long long* __restrict__ fill,
                          float* __restrict__ out, int64_t k) {
  const int64_t u = u0 + blockIdx.y;
  gather_greater(data, v, u, (int64_t)blockIdx.x * blockDim.x + threadIdx.x, (int64_t)gridDim.x * blockDim.x,
                 prefix[u], &fill[u], out + u * k);
}

__global__ void fill_ties_kernel(const uint32_t* __restrict__ prefix, const long long* __restrict__ remaining,
                                 float* __restrict__ out, int64_t k, int64_t u0) {
  const int64_t u = u0 + blockIdx.x;
  fill_ties(prefix[u], remaining[u], out + u * k, k, threadIdx.x, blockDim.x);
}

__global__ void keys_to_values_kernel(const uint32_t* __restrict__ prefix, float* __restrict__ out, int64_t units) {
  const int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (u < units) out[u] = float_from_order_key(prefix[u]);
}

}  // namespace kdfast
