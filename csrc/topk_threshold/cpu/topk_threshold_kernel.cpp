// Exact per-unit top-k on the CPU by radix select, units spread over OpenMP threads. Per unit: one pass
// builds a histogram of the top 11 bits of the order-preserving keys (the same keys the CUDA kernel uses)
// to find the bucket holding the k-th largest value; a second pass collects that bucket (usually a tiny
// fraction of M) and the values above it; nth_element finishes inside the bucket.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <functional>
#include <vector>

#include "topk_threshold/topk_threshold.h"

namespace kdfast {
namespace {

constexpr int kTopBits = 11;
constexpr int kShift = 32 - kTopBits;

template <typename Visit>
void for_each_value(const float* data, const UnitView& v, int64_t u, Visit&& visit) {
  const int64_t outer = v.count / v.inner;
  for (int64_t o = 0; o < outer; ++o) {
    const float* src = data + u * v.s_unit + o * v.s_outer;
    for (int64_t i = 0; i < v.inner; ++i) visit(src[i]);
  }
}

// The unit's k largest values: `above` gets every value in buckets above the k-th largest's bucket, and
// `bucket` that bucket's values with its `rank` largest (the rank-th being the k-th overall) moved first.
struct UnitSelection {
  std::vector<float> above, bucket;
  int64_t rank = 0;

  void select(const float* data, const UnitView& v, int64_t u, int64_t k) {
    std::array<int64_t, 1 << kTopBits> hist{};
    for_each_value(data, v, u, [&](float x) { ++hist[float_order_key(x) >> kShift]; });
    int64_t remaining = k;
    uint32_t digit = (1u << kTopBits) - 1;
    for (;; --digit) {
      if (remaining <= hist[digit]) break;
      remaining -= hist[digit];
    }
    above.clear();
    bucket.clear();
    for_each_value(data, v, u, [&](float x) {
      const uint32_t d = float_order_key(x) >> kShift;
      if (d > digit) above.push_back(x);
      else if (d == digit) bucket.push_back(x);
    });
    rank = remaining;
    std::nth_element(bucket.begin(), bucket.begin() + (rank - 1), bucket.end(), std::greater<float>());
  }

  float kth() const { return bucket[rank - 1]; }
};

at::Tensor topk_threshold_cpu(const at::Tensor& acts, int64_t k) {
  at::Tensor storage;
  const UnitView v = make_unit_view(acts, k, storage);
  auto out = at::empty({v.units}, acts.options());
  const float* data = storage.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, v.units, 1, [&](int64_t begin, int64_t end) {
    UnitSelection sel;
    for (int64_t u = begin; u < end; ++u) {
      sel.select(data, v, u, k);
      dst[u] = sel.kth();
    }
  });
  return out;
}

at::Tensor unit_topk_cpu(const at::Tensor& acts, int64_t k) {
  at::Tensor storage;
  const UnitView v = make_unit_view(acts, k, storage);
  auto out = at::empty({v.units, k}, acts.options());
  const float* data = storage.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, v.units, 1, [&](int64_t begin, int64_t end) {
    UnitSelection sel;
    for (int64_t u = begin; u < end; ++u) {
      sel.select(data, v, u, k);
      float* row = dst + u * k;
      std::copy(sel.above.begin(), sel.above.end(), row);
      std::copy(sel.bucket.begin(), sel.bucket.begin() + sel.rank, row + sel.above.size());
      std::sort(row, row + k, std::greater<float>());
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CPU, m) {
  m.impl("topk_threshold", &topk_threshold_cpu);
  m.impl("unit_topk", &unit_topk_cpu);
}

}  // namespace kdfast
