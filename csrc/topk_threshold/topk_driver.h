#pragma once
// The GPU top-k algorithm, written once over a Backend that either launches the CUDA kernels
// (cuda/topk_threshold_kernel.cu) or emulates their grids on the host (cpu/topk_emulation.cpp, tests):
//
// 1. Sampled pivot (when k is a small fraction of M): an evenly spaced sample of S values per unit gives a
//    pivot that is, with a wide margin, below the unit's k-th largest value; ONE full read of the
//    activations copies every value >= pivot into a per-unit candidate row and counts NaN/Inf (the
//    finiteness check). A contiguous (N, U, H, W) or (M, U) tensor is read as one array in 16-B vectors
//    (topk_block.h's FlatView); other layouts unit by unit, 4 B per load. If every unit has >= k candidates (and they fit), its top k are exactly the top k
//    of its candidates; else (an unlucky or adversarial sample) the full path below runs on the data.
// 2. Radix select (11 + 11 + 10 bits) over the candidates, or over the data when the pivot does not pay:
//    three histogram passes narrow each unit to its k-th largest key.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "topk_threshold/topk_threshold.h"

namespace kdfast {

constexpr int kRadixPasses = 3;
constexpr int kRadixBits[kRadixPasses] = {11, 11, 10};
constexpr int kRadixShift[kRadixPasses] = {21, 10, 0};
constexpr int64_t kPivotSample = 8192;  // values sampled per unit on the GPU

// Whether and how to take the sampled-pivot path: the pivot is the rank-th largest of `sample` values,
// rank = λ + 6√λ + 8 with λ = k·S/M the expected sample values above the k-th largest, so the pivot lies
// below it unless the sample is ~6 standard deviations off; candidate rows hold 1.5x the expected count.
struct TopkPlan {
  bool sampled = false;
  int64_t sample = 0, rank = 0, cap = 0;
};

inline TopkPlan plan_topk(const UnitView& v, int64_t k, int64_t sample) {
  TopkPlan plan;
  if (v.units == 0 || sample < 64 || v.count < 8 * sample) return plan;
  const double lambda = (double)k * (double)sample / (double)v.count;
  const int64_t rank = (int64_t)std::ceil(lambda + 6.0 * std::sqrt(lambda) + 8.0);
  if (rank > sample / 8) return plan;  // candidates would be > ~1/5 of the data: the full path is as good
  plan.sampled = true;
  plan.sample = sample;
  plan.rank = rank;
  plan.cap = std::min(v.count, (int64_t)std::ceil(1.5 * (double)rank * (double)v.count / (double)sample) + 256);
  return plan;
}

// The selection's result: for each unit u, prefix[u] is the order key of its k-th largest value and
// remaining[u] how many copies of that value belong to the top k; (data, view) is where the top k lie
// (the candidate rows, or the activations themselves).
struct TopkSelection {
  at::Tensor storage, candidates;
  at::Tensor prefix, mask, remaining;
  UnitView view{};
  const float* data = nullptr;
  bool sampled = false;
  bool flat = false;  // the one full read streamed the flat array in 16-B vectors
  uint32_t* keys() { return reinterpret_cast<uint32_t*>(prefix.data_ptr<int>()); }
  uint32_t* mask_keys() { return reinterpret_cast<uint32_t*>(mask.data_ptr<int>()); }
  long long* remaining_ptr() { return reinterpret_cast<long long*>(remaining.data_ptr<int64_t>()); }
};

template <typename Backend>
TopkSelection select_topk(Backend& backend, const at::Tensor& acts, int64_t k, int64_t sample) {
  TopkSelection sel;
  const UnitView v = make_unit_view(acts, k, sel.storage);
  const auto opts = sel.storage.options();
  sel.prefix = at::zeros({v.units}, opts.dtype(at::kInt));
  sel.mask = at::zeros({v.units}, opts.dtype(at::kInt));
  sel.remaining = at::full({v.units}, k, opts.dtype(at::kLong));
  sel.view = v;
  sel.data = sel.storage.const_data_ptr<float>();
  if (v.units == 0) return sel;
  auto nonfinite = at::zeros({1}, opts.dtype(at::kInt));
  auto* bad = reinterpret_cast<unsigned int*>(nonfinite.data_ptr<int>());
  const TopkPlan plan = plan_topk(v, k, sample);
  bool checked = false;
  if (plan.sampled) {
    auto samples = at::empty({v.units, plan.sample}, opts);
    backend.sample(sel.data, v, plan.sample, samples.data_ptr<float>());
    auto pivots = std::get<0>(at::topk(samples, plan.rank, 1)).select(1, plan.rank - 1).contiguous();
    auto candidates = at::full({v.units, plan.cap}, -std::numeric_limits<float>::infinity(), opts);
    auto counts = at::zeros({v.units}, opts.dtype(at::kLong));
    auto* count_ptr = reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>());
    const FlatView flat = make_flat_view(v, sel.data);
    sel.flat = flat.vectors >= 0;
    if (sel.flat) {  // a contiguous layout: 16-B vector loads over the whole array
      backend.candidates_flat(sel.data, flat, pivots.const_data_ptr<float>(), count_ptr, candidates.data_ptr<float>(),
                              plan.cap, bad);
    } else {
      backend.candidates(sel.data, v, pivots.const_data_ptr<float>(), count_ptr, candidates.data_ptr<float>(), plan.cap,
                         bad);
    }
    // The call's one host sync: finiteness, and whether every unit's candidates hold its top k.
    const auto status = at::stack({nonfinite.to(at::kLong).squeeze(0), counts.min(), counts.max()}).cpu();
    const int64_t* s = status.const_data_ptr<int64_t>();
    check_finite_count(s[0]);
    checked = true;
    if (s[1] >= k && s[2] <= plan.cap) {
      sel.candidates = candidates;
      sel.data = candidates.const_data_ptr<float>();
      sel.view = UnitView{v.units, plan.cap, 1, 1, plan.cap};
      sel.sampled = true;
    }
  }
  auto hist = at::zeros({sel.view.units, 1 << kRadixBits[0]}, opts.dtype(at::kLong));
  auto* h = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
  for (int p = 0; p < kRadixPasses; ++p) {
    const RadixPass pass{sel.keys(), sel.mask_keys(), kRadixShift[p], 1 << kRadixBits[p]};
    backend.histogram(sel.data, sel.view, pass, h, p == 0 && !checked ? bad : nullptr);
    backend.select(h, pass, sel.keys(), sel.mask_keys(), sel.remaining_ptr(), sel.view.units);
  }
  if (!checked) check_finite_count(nonfinite.item<int>());
  return sel;
}

template <typename Backend>
at::Tensor topk_threshold_with(Backend& backend, const at::Tensor& acts, int64_t k, int64_t sample) {
  TopkSelection sel = select_topk(backend, acts, k, sample);
  auto out = at::empty({sel.view.units}, sel.storage.options());
  if (sel.view.units > 0) backend.keys_to_values(sel.keys(), out.data_ptr<float>(), sel.view.units);
  return out;
}

template <typename Backend>
at::Tensor unit_topk_with(Backend& backend, const at::Tensor& acts, int64_t k, int64_t sample) {
  TopkSelection sel = select_topk(backend, acts, k, sample);
  auto out = at::empty({sel.view.units, k}, sel.storage.options());
  if (sel.view.units == 0) return out;
  auto fill = at::zeros({sel.view.units}, sel.storage.options().dtype(at::kLong));
  backend.gather(sel.data, sel.view, sel.keys(), reinterpret_cast<unsigned long long*>(fill.data_ptr<int64_t>()),
                 out.data_ptr<float>(), k);
  backend.fill_ties(sel.keys(), sel.remaining_ptr(), out.data_ptr<float>(), k, sel.view.units);
  // Rows hold the exact top-k multiset in arbitrary order; sort them (k << M) for a canonical result.
  return std::get<0>(at::sort(out, /*dim=*/1, /*descending=*/true));
}

}  // namespace kdfast
