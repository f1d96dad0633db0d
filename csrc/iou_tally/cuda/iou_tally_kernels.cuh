#pragma once
// The tally's CUDA kernels, free of ATen so that scripts/check_cuda_build.py compiles them alone in seconds
// (registers, spills, SASS) on machines without a GPU.
#include <cstdint>

#include "iou_tally/iou_tally_block.h"

namespace kdfast {

constexpr int kTallyThreads = 256;

__global__ void lerp_table_kernel(LerpIndex* rows, int SH, int h, LerpIndex* cols, int SW, int w) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < SH) rows[i] = source_index(i, h, SH);
  else if (i < SH + SW) cols[i - SH] = source_index(i - SH, w, SW);
}

// One block per (unit = blockIdx.x, image = blockIdx.y) map: the phases of TallyBlock with barriers between.
// The maxima live in dynamic shared memory, or (kGlobalMaxima, maps with h + w > 12288) in the block's slice
// of a.scratch: two instantiations, so that the usual one addresses shared memory directly.
template <bool kGlobalMaxima>
__global__ void __launch_bounds__(kTallyThreads) iou_tally_kernel(const __grid_constant__ TallyArgs a) {
  extern __shared__ float dynamic[];  // row maxima (h), column maxima (w)
  __shared__ TallyShared shared;
  float* maxima = kGlobalMaxima ? block_maxima(a, dynamic, (int64_t)blockIdx.y * gridDim.x + blockIdx.x) : dynamic;
  TallyBlock block(a, shared, maxima, (int)blockIdx.y, (int)blockIdx.x);
  const int t = threadIdx.x, n = blockDim.x;
  block.maxima(t, n);
  __syncthreads();
  if (!block.bound(t, n)) return;  // uniform across the block: no thread waits at a later barrier
  __syncthreads();
  unsigned int local = block.pixels(t, n);
  for (int off = 16; off > 0; off >>= 1) local += __shfl_xor_sync(0xffffffffu, local, off);
  if ((t & 31) == 0 && local) atomicAdd(&shared.count, (unsigned long long)local);
  __syncthreads();
  block.image_labels(t, n);
  __syncthreads();
  block.activations(t, n);
}

// Instantiated here, so that scripts/check_cuda_build.py sees both.
template __global__ void iou_tally_kernel<false>(const __grid_constant__ TallyArgs);
template __global__ void iou_tally_kernel<true>(const __grid_constant__ TallyArgs);

}  // namespace kdfast
