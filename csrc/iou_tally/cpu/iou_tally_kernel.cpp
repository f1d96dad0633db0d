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
    std::vector<TallyShared> shared;
    std::vector<int64_t> ids(t.B);
    for (int64_t u = begin; u < end; ++u) {  // a unit's maps in all images, each with one thread
      for (int64_t b = 0; b < t.B; ++b) ids[b] = b * t.U + u;
      run_tally_blocks_on_host(a, ids, 1, dynamic, shared, [&]() -> const std::array<int, 1>& { return one_thread; });
    }
  });
  return t.result();
}

}  // namespace

// Host emulation of the CUDA op (tests only): its input handling (labels_validated skips the label range
// checks, as on the GPU) and launches, then every (image, unit) block of a launch, in shuffled order, runs
// its phases in lockstep with the others, with `threads` threads visited in a fresh shuffled order per phase
// (seeded, deterministic).
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
  // The CUDA op's launches: images in chunks, maxima of huge maps in one scratch array they reuse.
  const bool global = tally_maxima_in_global(t.h, t.w);
  const int64_t images_per_launch = tally_images_per_launch(t, kTallyScratchBytes);
  std::vector<float> scratch(global ? std::min(images_per_launch, t.B) * t.U * (t.h + t.w) : 0);
  std::mt19937_64 rng((uint64_t)seed);
  std::vector<int> order(threads);
  std::vector<float> dynamic;
  std::vector<TallyShared> shared;
  for (int64_t b0 = 0; b0 < t.B; b0 += images_per_launch) {
    TallyArgs a = t.args(b0, rows.data(), cols.data());
    if (global) a.scratch = scratch.data();
    std::vector<int64_t> blocks(std::min(images_per_launch, t.B - b0) * t.U);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    run_tally_blocks_on_host(a, blocks, (int)threads, dynamic, shared, [&]() -> const std::vector<int>& {
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      return order;
    });
  }
  return t.result();
}

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("iou_tally", &iou_tally_cpu); }

}  // namespace kdfast
