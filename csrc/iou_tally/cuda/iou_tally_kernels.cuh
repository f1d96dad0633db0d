#pragma once
// The tally's CUDA kernels, free of ATen so that scripts/check_cuda_build.py compiles them alone in seconds
// (registers, spills, SASS) on machines without a GPU.
#include <cstdint>

#include "iou_tally/iou_tally_block.h"

namespace kdfast {

constexpr int kTallyThreads = 256;
constexpr int64_t kTallyMaxDynamicBytes = 48 * 1024;  // the default per-block limit, no opt-in needed

__global__ void lerp_table_kernel(LerpIndex* rows, int SH, int h, LerpIndex* cols, int SW, int w) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < SH) rows[i] = source_index(i, h, SH);
  else if (i < SH + SW) cols[i - SH] = source_index(i - SH, w, SW);
}

// One block per (unit = blockIdx.x, image = blockIdx.y) map: the phases of TallyBlock with barriers between.
__global__ void __launch_bounds__(kTallyThreads) iou_tally_kernel(const __grid_constant__ TallyArgs a) {
  extern __shared__ float dynamic[];  // row maxima (h), column maxima (w)
  __shared__ TallyShared shared;
  TallyBlock block(a, shared, dynamic, (int)blockIdx.y, (int)blockIdx.x);
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

}  // namespace kdfast
