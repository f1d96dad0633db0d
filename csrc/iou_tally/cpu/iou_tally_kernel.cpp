// Fused upsample + threshold + IoU tally on the CPU. Units are spread over OpenMP threads, so each
// thread owns its rows of the intersection and activation tallies and needs no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "iou_tally/iou_tally.h"

namespace kdfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_tally_cpu(const at::Tensor& acts_in, const at::Tensor& thresholds_in,
                                                             const at::Tensor& seg_in, const at::Tensor& image_labels_in,
                                                             const at::Tensor& label_category_in, int64_t num_categories,
                                                             bool category_gated) {
  TallyProblem t(acts_in, thresholds_in, seg_in, image_labels_in, label_category_in, num_categories, category_gated);
  if (t.empty()) return t.result();
  const int64_t B = t.B, U = t.U, h = t.h, w = t.w, P = t.P, SH = t.SH, SW = t.SW, Q = t.Q, L = t.L, C = t.C;

  std::vector<LerpIndex> rows(SH), cols(SW);
  for (int64_t y = 0; y < SH; ++y) rows[y] = source_index((int)y, (int)h, (int)SH);
  for (int64_t x = 0; x < SW; ++x) cols[x] = source_index((int)x, (int)w, (int)SW);

  const float* acts_p = t.acts.const_data_ptr<float>();
  const float* thr_p = t.thresholds.const_data_ptr<float>();
  const int32_t* seg_p = t.seg.const_data_ptr<int32_t>();
  const int32_t* img_p = t.image_labels.const_data_ptr<int32_t>();
  const int64_t* cat_p = t.label_category.const_data_ptr<int64_t>();
  const uint8_t* present_p = category_gated ? nullptr : t.present.const_data_ptr<uint8_t>();
  int64_t* inter_p = t.inter.data_ptr<int64_t>();
  int64_t* act_p = t.act.data_ptr<int64_t>();

  at::parallel_for(0, U, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> touched(C);
    std::vector<float> row_max(h);
    for (int64_t u = begin; u < end; ++u) {
      const double T = (double)thr_p[u];
      int64_t* inter_row = inter_p + u * L;
      for (int64_t b = 0; b < B; ++b) {
        const float* map = acts_p + (b * U + u) * h * w;
        // Upsampling never exceeds the maximum of the source rows it blends, so a map with max <= T has an
        // empty mask, and so has every output row whose two source rows stay <= T.
        for (int64_t r = 0; r < h; ++r) row_max[r] = *std::max_element(map + r * w, map + (r + 1) * w);
        if ((double)*std::max_element(row_max.begin(), row_max.end()) <= T) continue;
        std::fill(touched.begin(), touched.end(), 0);
        int64_t count = 0;
        const int32_t* planes = seg_p + b * P * SH * SW;
        for (int64_t y = 0; y < SH; ++y) {
          if ((double)std::max(row_max[rows[y].i0], row_max[rows[y].i1]) <= T) continue;
          for (int64_t x = 0; x < SW; ++x) {
            if (bilinear_at(map, (int)w, rows[y], cols[x]) <= T) continue;
            ++count;
            for (int64_t p = 0; p < P; ++p) {
              const int32_t label = planes[(p * SH + y) * SW + x];
              if (label == 0) continue;
              ++inter_row[label];
              if (cat_p[label] >= 0) touched[cat_p[label]] = 1;
            }
          }
        }
        if (count == 0) continue;
        for (int64_t q = 0; q < Q; ++q) {
          const int32_t label = img_p[b * Q + q];
          if (label == 0) continue;
          inter_row[label] += count;  // an image-level label covers every active pixel
          if (cat_p[label] >= 0) touched[cat_p[label]] = 1;
        }
        for (int64_t c = 0; c < C; ++c) {
          const bool counts = category_gated ? touched[c] != 0 : present_p[b * C + c] != 0;
          if (counts) act_p[u * C + c] += count;
        }
      }
    }
  });
  return t.result();
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("iou_tally", &iou_tally_cpu); }

}  // namespace kdfast
