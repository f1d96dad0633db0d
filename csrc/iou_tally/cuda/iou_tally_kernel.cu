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


std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_tally_cuda(const at::Tensor& acts_in, const at::Tensor& thresholds_in,
                                                              const at::Tensor& seg_in, const at::Tensor& image_labels_in,
                                                              const at::Tensor& label_category_in, int64_t num_categories,
                                                              bool category_gated, bool labels_validated) {
  c10::cuda::CUDAGuard guard(acts_in.device());
  TallyProblem t(acts_in, thresholds_in, seg_in, image_labels_in, label_category_in, num_categories, category_gated,
                 /*check_label_ranges=*/!labels_validated);
  if (t.empty()) return t.result();
  // Maxima of maps with h + w > 12288 go to a global scratch array, one slice per block of a launch; the
  // launches (in order on one stream) reuse it.
  const bool global = tally_maxima_in_global(t.h, t.w);
  const int64_t images_per_launch = tally_images_per_launch(t, kTallyScratchBytes);
  at::Tensor scratch =
      global ? at::empty({std::min(images_per_launch, t.B) * t.U * (t.h + t.w)}, t.acts.options()) : at::Tensor();
  const size_t dynamic = (size_t)tally_dynamic_bytes(t.h, t.w);
  auto stream = at::cuda::getCurrentCUDAStream();
  // Index tables once per call (16 bytes per output row / column), read by every block.
  auto tables = at::empty({2 * (t.SH + t.SW)}, t.acts.options().dtype(at::kDouble));
  auto* rows = reinterpret_cast<LerpIndex*>(tables.data_ptr<double>());
  auto* cols = rows + t.SH;
  const int64_t entries = t.SH + t.SW;
  lerp_table_kernel<<<(unsigned)((entries + 255) / 256), 256, 0, stream>>>(rows, (int)t.SH, (int)t.h, cols, (int)t.SW,
                                                                          (int)t.w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Units on grid.x (up to 2^31 - 1), images on grid.y in chunks of at most 65535.
  for (int64_t b0 = 0; b0 < t.B; b0 += images_per_launch) {
    const int64_t images = std::min(images_per_launch, t.B - b0);
    TallyArgs args = t.args(b0, rows, cols);
    const dim3 grid((unsigned)t.U, (unsigned)images);
    if (global) {
      args.scratch = scratch.data_ptr<float>();
      iou_tally_kernel<true><<<grid, kTallyThreads, 0, stream>>>(args);
    } else {
      iou_tally_kernel<false><<<grid, kTallyThreads, dynamic, stream>>>(args);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return t.result();
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) { m.impl("iou_tally", &iou_tally_cuda); }

}  // namespace kdfast
