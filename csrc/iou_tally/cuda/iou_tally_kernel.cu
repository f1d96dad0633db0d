// Fused upsample + threshold + IoU tally on the GPU: one block per (image, unit) map running the block code
// of iou_tally_block.h (shared with the CPU kernel and the host emulation the tests run). The block reduces
// the raw map's row and column maxima and leaves at once when the map's maximum is <= T (most maps at
// q = 0.5%); otherwise it thresholds only the bounding box of output rows and columns that can exceed T.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "iou_tally/cuda/iou_tally_kernels.cuh"
#include "iou_tally/iou_tally.h"

namespace kdfast {
namespace {

constexpr int64_t kMaxGridY = 65535;

std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_tally_cuda(const at::Tensor& acts_in, const at::Tensor& thresholds_in,
                                                              const at::Tensor& seg_in, const at::Tensor& image_labels_in,
                                                              const at::Tensor& label_category_in, int64_t num_categories,
                                                              bool category_gated, bool labels_validated) {
  c10::cuda::CUDAGuard guard(acts_in.device());
  TallyProblem t(acts_in, thresholds_in, seg_in, image_labels_in, label_category_in, num_categories, category_gated,
                 /*check_label_ranges=*/!labels_validated);
  if (t.empty()) return t.result();
  const int64_t dynamic = tally_dynamic_bytes(t.h, t.w);
  TORCH_CHECK(dynamic <= kTallyMaxDynamicBytes, "kdfast.iou_tally: on CUDA, maps need h + w <= ",
              kTallyMaxDynamicBytes / (int64_t)sizeof(float), " (shared memory), got ", t.h, " x ", t.w);
  auto stream = at::cuda::getCurrentCUDAStream();
  // Index tables once per call (16 bytes per output row / column), read by every block.
  auto tables = at::empty({2 * (t.SH + t.SW)}, t.acts.options().dtype(at::kDouble));
  auto* rows = reinterpret_cast<LerpIndex*>(tables.data_ptr<double>());
  auto* cols = rows + t.SH;
  const int64_t entries = t.SH + t.SW;
  lerp_table_kernel<<<(unsigned)((entries + 255) / 256), 256, 0, stream>>>(rows, (int)t.SH, (int)t.h, cols, (int)t.SW,
                                                                          (int)t.w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Units on grid.x (up to 2^31 - 1), images on grid.y in chunks of 65535.
  for (int64_t b0 = 0; b0 < t.B; b0 += kMaxGridY) {
    const int64_t images = std::min(kMaxGridY, t.B - b0);
    iou_tally_kernel<<<dim3((unsigned)t.U, (unsigned)images), kTallyThreads, (size_t)dynamic, stream>>>(
        t.args(b0, rows, cols));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return t.result();
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) { m.impl("iou_tally", &iou_tally_cuda); }

}  // namespace kdfast
