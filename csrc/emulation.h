#pragma once
// Host emulations of the CUDA kernels' grids (defined beside the CPU kernels, exposed to the tests through
// kdfast._C): the same block code the GPU runs, every block's phases with many threads in shuffled order.
#include <ATen/ATen.h>
#include <string>
#include <tuple>

namespace kdfast {

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_iou_tally_cuda(const at::Tensor& acts, const at::Tensor& thresholds,
                                                                      const at::Tensor& seg, const at::Tensor& image_labels,
                                                                      const at::Tensor& label_category, int64_t num_categories,
                                                                      bool category_gated, bool labels_validated,
                                                                      int64_t threads, int64_t seed);

// (thresholds (U,), top-k rows (U, k), the path that gave them) of the CUDA top-k algorithm, `sample` values
// per unit for the pivot (the GPU uses kPivotSample), `blocks_x` blocks per unit (in all, for the flat read).
// The path: "pivot_flat" (sampled pivot, one read in 16-B vectors over the contiguous array), "pivot"
// (sampled pivot, read unit by unit) or "radix" (three histogram passes over the data).
std::tuple<at::Tensor, at::Tensor, std::string> emulate_topk_cuda(const at::Tensor& acts, int64_t k, int64_t sample,
                                                           int64_t threads, int64_t blocks_x, int64_t seed);

}  // namespace kdfast
