#pragma once
// Host emulations of the CUDA kernels' grids (defined beside the CPU kernels, exposed to the tests through
// kdfast._C): the same block code the GPU runs, every block's phases with many threads in shuffled order.
#include <ATen/ATen.h>
#include <tuple>

namespace kdfast {

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_iou_tally_cuda(const at::Tensor& acts, const at::Tensor& thresholds,
                                                                      const at::Tensor& seg, const at::Tensor& image_labels,
                                                                      const at::Tensor& label_category, int64_t num_categories,
                                                                      bool category_gated, int64_t threads, int64_t seed);

// (thresholds (U,), top-k rows (U, k), whether the sampled-pivot path held) of the CUDA top-k algorithm,
// `sample` values per unit for the pivot (the GPU uses kPivotSample), `blocks_x` blocks per unit.
std::tuple<at::Tensor, at::Tensor, bool> emulate_topk_cuda(const at::Tensor& acts, int64_t k, int64_t sample,
                                                           int64_t threads, int64_t blocks_x, int64_t seed);

}  // namespace kdfast
