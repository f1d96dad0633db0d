// Fused upsample + threshold + IoU tally on the GPU: one block per (image, unit) map. The block first
// reduces the raw h x w map's maximum and leaves at once when it is <= T (most maps at q = 0.5%), so
// the S x S upsampled mask is only ever formed, in registers, for maps that can cross the threshold.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "iou_tally/iou_tally.h"

namespace kdfast {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxCategories = 64;

__global__ void iou_tally_kernel(const float* __restrict__ acts, const float* __restrict__ thresholds,
                                 const int32_t* __restrict__ seg, const int32_t* __restrict__ image_labels,
                                 const int64_t* __restrict__ label_category, const uint8_t* __restrict__ present,
                                 int U, int h, int w, int P, int SH, int SW, int Q, int L, int C,
                                 unsigned long long* __restrict__ inter, unsigned long long* __restrict__ act) {
  __shared__ float block_max[kThreads / 32];
  __shared__ int touched[kMaxCategories];
  __shared__ unsigned long long count;
  const int u = blockIdx.x;
  const int b = blockIdx.y;
  const float* map = acts + ((int64_t)b * U + u) * h * w;
  const double T = (double)thresholds[u];

  float m = -INFINITY;
  for (int i = threadIdx.x; i < h * w; i += blockDim.x) m = fmaxf(m, map[i]);
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if ((threadIdx.x & 31) == 0) block_max[threadIdx.x >> 5] = m;
  if (threadIdx.x < kMaxCategories) touched[threadIdx.x] = 0;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  m = block_max[0];
  for (int i = 1; i < kThreads / 32; ++i) m = fmaxf(m, block_max[i]);
  if ((double)m <= T) return;  // uniform across the block: no thread passes a later barrier

  const int32_t* planes = seg + (int64_t)b * P * SH * SW;
  unsigned long long* inter_row = inter + (int64_t)u * L;
  unsigned int local = 0;
  for (int pix = threadIdx.x; pix < SH * SW; pix += blockDim.x) {
    const int y = pix / SW, x = pix - y * SW;
    if (bilinear_at(map, w, source_index(y, h, SH), source_index(x, w, SW)) <= T) continue;
    ++local;
    for (int p = 0; p < P; ++p) {
      const int32_t label = planes[(int64_t)p * SH * SW + pix];
      if (label == 0) continue;
      atomicAdd(&inter_row[label], 1ULL);
      const int64_t c = label_category[label];
      if (c >= 0) touched[c] = 1;
    }
  }
  for (int off = 16; off > 0; off >>= 1) local += __shfl_xor_sync(0xffffffffu, local, off);
  if ((threadIdx.x & 31) == 0 && local) atomicAdd(&count, (unsigned long long)local);
  __syncthreads();
  const unsigned long long n = count;
  if (n == 0) return;
  for (int q = threadIdx.x; q < Q; q += blockDim.x) {
    const int32_t label = image_labels[(int64_t)b * Q + q];
    if (label == 0) continue;
    atomicAdd(&inter_row[label], n);  // an image-level label covers every active pixel
    const int64_t c = label_category[label];
    if (c >= 0) touched[c] = 1;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const bool counts = present == nullptr ? touched[c] != 0 : present[(int64_t)b * C + c] != 0;
    if (counts) atomicAdd(&act[(int64_t)u * C + c], n);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_tally_cuda(const at::Tensor& acts_in, const at::Tensor& thresholds_in,
                                                              const at::Tensor& seg_in, const at::Tensor& image_labels_in,
                                                              const at::Tensor& label_category_in, int64_t num_categories,
                                                              bool category_gated) {
  c10::cuda::CUDAGuard guard(acts_in.device());
  TallyProblem t(acts_in, thresholds_in, seg_in, image_labels_in, label_category_in, num_categories, category_gated);
  if (t.empty()) return t.result();
  TORCH_CHECK(t.B <= 65535, "kdfast.iou_tally: at most 65535 images per call on CUDA, got ", t.B);
  auto stream = at::cuda::getCurrentCUDAStream();
  iou_tally_kernel<<<dim3((unsigned)t.U, (unsigned)t.B), kThreads, 0, stream>>>(
      t.acts.const_data_ptr<float>(), t.thresholds.const_data_ptr<float>(), t.seg.const_data_ptr<int32_t>(),
      t.image_labels.const_data_ptr<int32_t>(), t.label_category.const_data_ptr<int64_t>(),
      category_gated ? nullptr : t.present.const_data_ptr<uint8_t>(), (int)t.U, (int)t.h, (int)t.w, (int)t.P,
      (int)t.SH, (int)t.SW, (int)t.Q, (int)t.L, (int)t.C, reinterpret_cast<unsigned long long*>(t.inter.data_ptr<int64_t>()),
      reinterpret_cast<unsigned long long*>(t.act.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return t.result();
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) { m.impl("iou_tally", &iou_tally_cuda); }

}  // namespace kdfast
