// Fused upsample + threshold + IoU tally on the CPU: the CUDA kernel's block code (iou_tally_block.h) run
// with one thread per (image, unit) map. Units are spread over OpenMP threads, so each thread owns its rows
// of the intersection and activation tallies and needs no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "emulation.h"
#include "iou_tally/iou_tally.h"

namespace kdfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_tally_cpu(const at::Tensor& acts_in, const at::Tensor& thresholds_in,
                                                             const at::Tensor& seg_in, const at::Tensor& image_labels_in,
                                                             const at::Tensor& label_category_in, int64_t num_categories,
                                                             bool category_gated, bool /*labels_validated*/) {
  // Label ranges checked even when the caller vouches for them: on the CPU that costs no sync.
  TallyProblem t(acts_in, thresholds_in, seg_in, image_labels_in, label_category_in, num_categories, category_gated,
                 /*check_label_ranges=*/true);
  if (t.empty()) return t.result();
  const std::vector<LerpIndex> rows = lerp_table(t.SH, t.h), cols = lerp_table(t.SW, t.w);
  const TallyArgs a = t.args(0, rows.data(), cols.data());
  const std::array<int, 1> one_thread{0};
  at::parallel_for(0, t.U, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dynamic;
    for (int64_t u = begin; u < end; ++u) {
      for (int64_t b = 0; b < t.B; ++b) {
        run_tally_block_on_host(a, (int)b, (int)u, 1, dynamic, [&](int) -> const std::array<int, 1>& { return one_thread; });
      }
    }
  });
  return t.result();
}

}  // namespace

// Host emulation of the CUDA op (tests only): its input handling (labels_validated skips the label range
// checks, as on the GPU), then every (image, unit) block, in shuffled order, runs its phases with `threads`
// threads visited in a fresh shuffled order per phase (seeded, deterministic).
std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_iou_tally_cuda(const at::Tensor& acts, const at::Tensor& thresholds,
                                                                      const at::Tensor& seg, const at::Tensor& image_labels,
                                                                      const at::Tensor& label_category, int64_t num_categories,
                                                                      bool category_gated, bool labels_validated,
                                                                      int64_t threads, int64_t seed) {
  TORCH_CHECK(threads >= 1 && threads <= 1024, "kdfast: emulated blocks need 1..1024 threads, got ", threads);
  TallyProblem t(acts.cpu(), thresholds.cpu(), seg.cpu(), image_labels.cpu(), label_category.cpu(), num_categories,
                 category_gated, /*check_label_ranges=*/!labels_validated);  // as the CUDA op
  if (t.empty()) return t.result();
  const std::vector<LerpIndex> rows = lerp_table(t.SH, t.h), cols = lerp_table(t.SW, t.w);
  const TallyArgs a = t.args(0, rows.data(), cols.data());
  std::mt19937_64 rng((uint64_t)seed);
  std::vector<int64_t> blocks(t.B * t.U);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  std::vector<int> order(threads);
  std::vector<float> dynamic;
  for (int64_t block : blocks) {
    run_tally_block_on_host(a, (int)(block / t.U), (int)(block % t.U), (int)threads, dynamic, [&](int) -> const std::vector<int>& {
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      return order;
    });
  }
  return t.result();
}

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("iou_tally", &iou_tally_cpu); }

}  // namespace kdfast
