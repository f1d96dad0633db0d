#pragma once
#include <ATen/ATen.h>
#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "iou_tally/iou_tally_block.h"
#include "macros.h"

namespace kdfast {

// Checks shapes and dtypes shared by every backend and returns the per-label pixel counts, which are
// plain bincounts: each plane pixel counts for its label, each image-level label for seg_h·seg_w pixels.
// The label ranges (seg, image_labels in [0, L), label_category in [-1, C)) need reads on the host — one
// sync per call on a GPU — so the CUDA op skips them (check_label_ranges = false) when its caller vouches
// for labels validated once (a packed Broden cache); the CPU op always checks (no sync to save there).
inline at::Tensor check_tally_inputs_and_count_labels(const at::Tensor& acts, const at::Tensor& thresholds,
                                                      const at::Tensor& seg, const at::Tensor& image_labels,
                                                      const at::Tensor& label_category, int64_t num_categories,
                                                      bool check_label_ranges) {
  TORCH_CHECK(acts.dim() == 4, "kdfast.iou_tally: acts must be (B, U, h, w), got ", acts.sizes());
  TORCH_CHECK(acts.scalar_type() == at::kFloat, "kdfast.iou_tally: acts must be float32, got ", acts.scalar_type());
  TORCH_CHECK(thresholds.dim() == 1 && thresholds.size(0) == acts.size(1),
              "kdfast.iou_tally: thresholds must be (U,) = (", acts.size(1), ",), got ", thresholds.sizes());
  TORCH_CHECK(thresholds.scalar_type() == at::kFloat, "kdfast.iou_tally: thresholds must be float32");
  TORCH_CHECK(seg.dim() == 4 && seg.size(0) == acts.size(0),
              "kdfast.iou_tally: seg must be (B, P, S_h, S_w) with B = ", acts.size(0), ", got ", seg.sizes());
  TORCH_CHECK(seg.scalar_type() == at::kInt, "kdfast.iou_tally: seg must be int32, got ", seg.scalar_type());
  TORCH_CHECK(image_labels.dim() == 2 && image_labels.size(0) == acts.size(0),
              "kdfast.iou_tally: image_labels must be (B, Q), got ", image_labels.sizes());
  TORCH_CHECK(image_labels.scalar_type() == at::kInt, "kdfast.iou_tally: image_labels must be int32");
  TORCH_CHECK(label_category.dim() == 1 && label_category.size(0) >= 1 && label_category.scalar_type() == at::kLong,
              "kdfast.iou_tally: label_category must be a non-empty int64 vector (one entry per label number)");
  TORCH_CHECK(num_categories >= 1 && num_categories <= kTallyMaxCategories,
              "kdfast.iou_tally: num_categories must be in [1, ", kTallyMaxCategories, "]");
  TORCH_CHECK(seg.size(2) * seg.size(3) < (int64_t(1) << 31) && acts.size(2) * acts.size(3) < (int64_t(1) << 31),
              "kdfast.iou_tally: maps and label planes must have fewer than 2^31 pixels, got ", acts.sizes(), " and ",
              seg.sizes());
  for (const auto* t : {&thresholds, &seg, &image_labels, &label_category}) {
    TORCH_CHECK(t->device() == acts.device(), "kdfast.iou_tally: all tensors must be on ", acts.device());
  }
  const int64_t num_labels = label_category.size(0);
  if (check_label_ranges) {
    TORCH_CHECK(label_category.min().item<int64_t>() >= -1 && label_category.max().item<int64_t>() < num_categories,
                "kdfast.iou_tally: label_category entries must be -1 (no category) or in [0, ", num_categories, ")");
    for (const auto* t : {&seg, &image_labels}) {
      if (t->numel() == 0) continue;
      const auto lo = t->min().item<int64_t>(), hi = t->max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < num_labels, "kdfast.iou_tally: ", t == &seg ? "seg" : "image_labels",
                  " holds label numbers in [", lo, ", ", hi, "] but label_category covers only [0, ", num_labels, ")");
    }
  }
  // index_add_ of a broadcast weight, not bincount: bincount on a GPU reads the maximum on the host.
  auto counts = at::zeros({num_labels}, label_category.options());
  const auto add = [&](const at::Tensor& labels, int64_t weight) {
    if (labels.numel() == 0) return;
    const auto flat = labels.flatten();
    counts.index_add_(0, flat, at::full({1}, weight, counts.options()).expand({flat.numel()}));
  };
  add(seg, 1);
  add(image_labels, seg.size(2) * seg.size(3));
  counts.index_put_({0}, 0);  // label 0 means "unlabeled"
  return counts;
}

// (B, C) uint8: does category c occur anywhere in image b (any plane pixel or image-level label)?
// Needed only for the original NetDissect denominator.
inline at::Tensor categories_present(const at::Tensor& seg, const at::Tensor& image_labels,
                                     const at::Tensor& label_category, int64_t num_categories) {
  const int64_t B = seg.size(0);
  auto labels = at::cat({seg.reshape({B, -1}), image_labels}, 1).to(at::kLong);
  auto cats = label_category.index_select(0, labels.flatten()).reshape({B, -1}) + 1;  // -1 (none) -> 0
  cats.masked_fill_(labels == 0, 0);                                                     // unlabeled -> 0
  auto present = at::zeros({B, num_categories + 1}, label_category.options());
  if (cats.size(1) > 0) present.scatter_(1, cats, 1);
  return present.narrow(1, 1, num_categories).to(at::kByte).contiguous();
}

// One batch's inputs, checked and made contiguous, with its sizes and the zeroed outputs both kernels fill.
struct TallyProblem {
  at::Tensor acts, thresholds, seg, image_labels, label_category;
  int64_t B, U, h, w, P, SH, SW, Q, L, C;
  at::Tensor label_counts, inter, act;
  at::Tensor present;  // (B, C) uint8, only for the original NetDissect denominator

  TallyProblem(const at::Tensor& acts_in, const at::Tensor& thresholds_in, const at::Tensor& seg_in,
               const at::Tensor& image_labels_in, const at::Tensor& label_category_in, int64_t num_categories,
               bool category_gated, bool check_label_ranges)
      : label_counts(check_tally_inputs_and_count_labels(acts_in, thresholds_in, seg_in, image_labels_in,
                                                         label_category_in, num_categories, check_label_ranges)) {
    acts = acts_in.contiguous();
    thresholds = thresholds_in.contiguous();
    seg = seg_in.contiguous();
    image_labels = image_labels_in.contiguous();
    label_category = label_category_in.contiguous();
    B = acts.size(0), U = acts.size(1), h = acts.size(2), w = acts.size(3);
    P = seg.size(1), SH = seg.size(2), SW = seg.size(3), Q = image_labels.size(1);
    L = label_category.size(0), C = num_categories;
    inter = at::zeros({U, L}, label_category.options());
    act = at::zeros({U, C}, label_category.options());
    if (!category_gated && !empty()) present = categories_present(seg, image_labels, label_category, C);
  }
  bool empty() const { return B == 0 || U == 0 || h == 0 || w == 0 || SH == 0 || SW == 0; }
  // Launch arguments for images [b0, ...), with index tables `rows` (SH) and `cols` (SW).
  TallyArgs args(int64_t b0, const LerpIndex* rows, const LerpIndex* cols) const {
    TallyArgs a{};
    a.acts = acts.const_data_ptr<float>() + b0 * U * h * w;
    a.thresholds = thresholds.const_data_ptr<float>();
    a.seg = seg.const_data_ptr<int32_t>() + b0 * P * SH * SW;
    a.image_labels = image_labels.const_data_ptr<int32_t>() + b0 * Q;
    a.label_category = label_category.const_data_ptr<int64_t>();
    a.present = present.defined() ? present.const_data_ptr<uint8_t>() + b0 * C : nullptr;
    a.rows = rows, a.cols = cols;
    a.U = (int)U, a.h = (int)h, a.w = (int)w, a.P = (int)P, a.SH = (int)SH, a.SW = (int)SW, a.Q = (int)Q;
    a.L = (int)L, a.C = (int)C;
    a.inter = reinterpret_cast<unsigned long long*>(inter.data_ptr<int64_t>());
    a.act = reinterpret_cast<unsigned long long*>(act.data_ptr<int64_t>());
    return a;
  }
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result() const { return {label_counts, inter, act}; }
};

// Images per launch of the CUDA grid (grid.y <= 65535); maps whose maxima go to global scratch memory take as
// many images as keep that scratch (one slice of h + w floats per block) within `scratch_bytes`, at least one.
inline int64_t tally_images_per_launch(const TallyProblem& t, int64_t scratch_bytes) {
  constexpr int64_t kMaxGridY = 65535;
  if (!tally_maxima_in_global(t.h, t.w)) return kMaxGridY;
  const int64_t per_image = t.U * (t.h + t.w) * (int64_t)sizeof(float);
  return std::max<int64_t>(1, std::min<int64_t>(kMaxGridY, scratch_bytes / per_image));
}

constexpr int64_t kTallyScratchBytes = int64_t(256) << 20;  // global maxima of huge maps, per launch

// The output rows' (or columns') source indices: one table per call, shared by every map.
inline std::vector<LerpIndex> lerp_table(int64_t out_size, int64_t in_size) {
  std::vector<LerpIndex> table(out_size);
  for (int64_t i = 0; i < out_size; ++i) table[i] = source_index((int)i, (int)in_size, (int)out_size);
  return table;
}

// Runs (image, unit) blocks `ids` (image · U + unit) on the host with `threads` threads each, phase by phase:
// a phase of every block before the next phase of any (as if all were resident at once, so blocks that shared
// storage would clash), each phase's threads in the order `order()` returns (a permutation of 0..threads-1),
// with the CUDA kernel's barriers. Maxima live in a.scratch when set, else in `dynamic` (grown to fit).
// The CPU kernel runs one block with one thread; the emulation tests run all blocks, shuffled.
template <typename Order>
void run_tally_blocks_on_host(const TallyArgs& a, const std::vector<int64_t>& ids, int threads,
                              std::vector<float>& dynamic, std::vector<TallyShared>& shared, Order&& order) {
  const int64_t n = (int64_t)ids.size(), width = (int64_t)a.h + a.w;
  if (a.scratch == nullptr) dynamic.resize(n * width);
  shared.resize(n);
  std::vector<TallyBlock> blocks;
  blocks.reserve(n);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t id = ids[j];
    blocks.emplace_back(a, shared[j], block_maxima(a, dynamic.data() + j * width, id), (int)(id / a.U), (int)(id % a.U));
  }
  std::vector<char> live(n, 1);
  for (auto& block : blocks) {
    for (int t : order()) block.maxima(t, threads);
  }
  for (int64_t j = 0; j < n; ++j) {
    for (int t : order()) live[j] = blocks[j].bound(t, threads) && live[j];  // uniform: every thread agrees
  }
  for (int64_t j = 0; j < n; ++j) {
    if (live[j]) {
      for (int t : order()) shared[j].count += blocks[j].pixels(t, threads);
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    if (live[j]) {
      for (int t : order()) blocks[j].image_labels(t, threads);
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    if (live[j]) {
      for (int t : order()) blocks[j].activations(t, threads);
    }
  }
}

}  // namespace kdfast
