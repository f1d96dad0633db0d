// Exact per-unit top-k on the CPU by radix select, units spread over OpenMP threads. One pass builds a
// histogram of the top 11 bits of the order-preserving keys (the same keys the CUDA kernel uses) to find
// the bucket holding the k-th largest value; a second pass collects that bucket (usually a tiny fraction
// of M) and the values above it; nth_element finishes inside the bucket.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <vector>

#include "topk_threshold/topk_threshold.h"

namespace kdfast {
namespace {

constexpr int kTopBits = 11;
constexpr int kShift = 32 - kTopBits;
constexpr int64_t kUnitChunk = 64;  // units selected together, so each pass streams through memory in order

// The k largest values of one unit: `above` holds every value in buckets above the bucket of the k-th
// largest, `bucket` that bucket's values with its `rank` largest (the rank-th is the k-th overall) first.
struct UnitSelection {
  std::array<int64_t, 1 << kTopBits> hist;
  uint32_t digit = 0;
  int64_t rank = 0;
  std::vector<float> above, bucket;

  void reset() {
    hist.fill(0);
    above.clear();
    bucket.clear();
  }
  void choose_bucket(int64_t k) {
    int64_t remaining = k;  // k <= M, so the scan stops at a bucket
    for (digit = (1u << kTopBits) - 1;; --digit) {
      if (remaining <= hist[digit]) break;
      remaining -= hist[digit];
    }
    rank = remaining;
  }
  void collect(float x) {
    const uint32_t d = float_order_key(x) >> kShift;
    if (d > digit) above.push_back(x);
    else if (d == digit) bucket.push_back(x);
  }
  float finish() {
    std::nth_element(bucket.begin(), bucket.begin() + (rank - 1), bucket.end(), std::greater<float>());
    return bucket[rank - 1];
  }
};

// Visits the values of units [u0, u1) image by image (outer index), unit by unit within an image, which
// is the order they lie in memory for (N, U, H, W) and (M, U) layouts.
template <typename Visit>
void for_each_value(const float* data, const UnitView& v, int64_t u0, int64_t u1, Visit&& visit) {
  const int64_t outer = v.count / v.inner;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t u = u0; u < u1; ++u) {
      const float* src = data + u * v.s_unit + o * v.s_outer;
      for (int64_t i = 0; i < v.inner; ++i) visit(u - u0, src[i]);
    }
  }
}

// Runs the two-pass selection for every unit, chunk by chunk, and hands each finished unit to `emit`.
// The histogram pass doubles as the finiteness check (no separate pass): NaN/Inf is an error (raised once
// every thread is done; whatever was emitted is discarded with the output).
template <typename Emit>
void select_units(const float* data, const UnitView& v, int64_t k, Emit&& emit) {
  std::atomic<int64_t> nonfinite{0};
  at::parallel_for(0, v.units, 1, [&](int64_t begin, int64_t end) {
    std::vector<UnitSelection> sel(std::min<int64_t>(kUnitChunk, end - begin));
    int64_t bad = 0;
    for (int64_t u0 = begin; u0 < end; u0 += kUnitChunk) {
      const int64_t u1 = std::min(end, u0 + kUnitChunk);
      for (int64_t j = 0; j < u1 - u0; ++j) sel[j].reset();
      for_each_value(data, v, u0, u1, [&](int64_t j, float x) {
        bad += !is_finite_value(x);
        ++sel[j].hist[float_order_key(x) >> kShift];
      });
      if (bad) break;
      for (int64_t j = 0; j < u1 - u0; ++j) sel[j].choose_bucket(k);
      for_each_value(data, v, u0, u1, [&](int64_t j, float x) { sel[j].collect(x); });
      for (int64_t j = 0; j < u1 - u0; ++j) emit(u0 + j, sel[j]);
    }
    nonfinite += bad;
  });
  check_finite_count(nonfinite.load());
}

at::Tensor topk_threshold_cpu(const at::Tensor& acts, int64_t k) {
  at::Tensor storage;
  const UnitView v = make_unit_view(acts, k, storage);
  auto out = at::empty({v.units}, acts.options());
  float* dst = out.data_ptr<float>();
  select_units(storage.const_data_ptr<float>(), v, k, [&](int64_t u, UnitSelection& s) { dst[u] = s.finish(); });
  return out;
}

at::Tensor unit_topk_cpu(const at::Tensor& acts, int64_t k) {
  at::Tensor storage;
  const UnitView v = make_unit_view(acts, k, storage);
  auto out = at::empty({v.units, k}, acts.options());
  float* dst = out.data_ptr<float>();
  select_units(storage.const_data_ptr<float>(), v, k, [&](int64_t u, UnitSelection& s) {
    s.finish();
    float* row = dst + u * k;
    std::copy(s.above.begin(), s.above.end(), row);
    std::copy(s.bucket.begin(), s.bucket.begin() + s.rank, row + s.above.size());
    std::sort(row, row + k, std::greater<float>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CPU, m) {
  m.impl("topk_threshold", &topk_threshold_cpu);
  m.impl("unit_topk", &unit_topk_cpu);
}

}  // namespace kdfast
