// Exact per-unit top-k on the GPU (algorithm: topk_driver.h): a sampled pivot and ONE full read that
// compacts the candidates and checks finiteness, then radix select over the candidates; the three-pass radix
// select over the data only when the pivot does not pay or fails. Units beyond 65535 are tiled on grid.y.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "topk_threshold/cuda/topk_kernels.cuh"
#include "topk_threshold/topk_driver.h"

namespace kdfast {
namespace {

constexpr int64_t kMaxGridY = 65535;

// Launches the kernels on the current stream, units tiled so that grid.y stays <= 65535.
struct CudaBackend {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  // Blocks per unit: enough to stream each unit's values with ~16 per thread, ~8k blocks in all.
  static unsigned blocks_per_unit(const UnitView& v) {
    const int64_t wanted = (v.count + kTopkThreads * 16 - 1) / (kTopkThreads * 16);
    const int64_t cap = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, v.units));
    return (unsigned)std::max<int64_t>(1, std::min(wanted, cap));
  }
  template <typename Launch>
  static void tiles(int64_t units, Launch&& launch) {
    for (int64_t u0 = 0; u0 < units; u0 += kMaxGridY) launch(u0, (unsigned)std::min(kMaxGridY, units - u0));
  }

  void sample(const float* data, const UnitView& v, int64_t size, float* out) {
    tiles(v.units, [&](int64_t u0, unsigned n) { sample_kernel<<<n, kTopkThreads, 0, stream>>>(data, v, u0, size, out); });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void candidates(const float* data, const UnitView& v, const float* pivots, unsigned long long* counts, float* cand,
                  int64_t cap, unsigned int* nonfinite) {
    tiles(v.units, [&](int64_t u0, unsigned n) {
      candidates_kernel<<<dim3(blocks_per_unit(v), n), kTopkThreads, 0, stream>>>(data, v, u0, pivots, counts, cand, cap,
                                                                                  nonfinite);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void candidates_flat(const float* data, const FlatView& v, const float* pivots, unsigned long long* counts, float* cand,
                       int64_t cap, unsigned int* nonfinite) {
    // ~8 vectors (32 values) per thread, at most 8192 blocks (~8 waves of 6 resident blocks on 132 SMs).
    const int64_t wanted = (v.vectors + kTopkThreads * 8 - 1) / (kTopkThreads * 8);
    const unsigned blocks = (unsigned)std::max<int64_t>(1, std::min<int64_t>(wanted, 8192));
    candidates_flat_kernel<<<blocks, kTopkThreads, 0, stream>>>(data, v, pivots, counts, cand, cap, nonfinite);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void histogram(const float* data, const UnitView& v, const RadixPass& pass, unsigned long long* hist,
                 unsigned int* nonfinite) {
    tiles(v.units, [&](int64_t u0, unsigned n) {
      radix_histogram_kernel<<<dim3(blocks_per_unit(v), n), kTopkThreads, 0, stream>>>(data, v, u0, pass, hist, nonfinite);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void select(unsigned long long* hist, const RadixPass& pass, uint32_t* prefix, uint32_t* mask, long long* remaining,
              int64_t units) {
    // Blocks on grid.x (up to 2^31 - 1): no tiling needed.
    radix_select_kernel<<<(unsigned)units, kTopkThreads, 0, stream>>>(hist, pass.shift, pass.bins, prefix, mask,
                                                                       remaining, 0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void keys_to_values(const uint32_t* prefix, float* out, int64_t units) {
    keys_to_values_kernel<<<(unsigned)((units + kTopkThreads - 1) / kTopkThreads), kTopkThreads, 0, stream>>>(prefix, out,
                                                                                                           units);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void gather(const float* data, const UnitView& v, const uint32_t* prefix, unsigned long long* fill, float* out, int64_t k) {
    tiles(v.units, [&](int64_t u0, unsigned n) {
      gather_greater_kernel<<<dim3(blocks_per_unit(v), n), kTopkThreads, 0, stream>>>(data, v, u0, prefix, fill, out, k);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  void fill_ties(const uint32_t* prefix, const long long* remaining, float* out, int64_t k, int64_t units) {
    fill_ties_kernel<<<(unsigned)units, kTopkThreads, 0, stream>>>(prefix, remaining, out, k, 0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor topk_threshold_cuda(const at::Tensor& acts, int64_t k) {
  c10::cuda::CUDAGuard guard(acts.device());
  CudaBackend backend;
  return topk_threshold_with(backend, acts, k, kPivotSample);
}

at::Tensor unit_topk_cuda(const at::Tensor& acts, int64_t k) {
  c10::cuda::CUDAGuard guard(acts.device());
  CudaBackend backend;
  return unit_topk_with(backend, acts, k, kPivotSample);
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) {
  m.impl("topk_threshold", &topk_threshold_cuda);
  m.impl("unit_topk", &unit_topk_cuda);
}

}  // namespace kdfast
