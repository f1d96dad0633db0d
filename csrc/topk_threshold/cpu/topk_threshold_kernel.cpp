// Exact per-unit top-k on the CPU: one std::nth_element per unit, units spread over OpenMP threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "topk_threshold/topk_threshold.h"

namespace kdfast {
namespace {

// Copies unit u's M values into `buf` and moves its k largest to the front (k-th largest at k-1).
void select_unit(const float* data, const UnitView& v, int64_t u, int64_t k, std::vector<float>& buf) {
  buf.resize(v.count);
  if (v.inner > 1) {
    const int64_t outer = v.count / v.inner;
    for (int64_t o = 0; o < outer; ++o) {
      const float* src = data + u * v.s_unit + o * v.s_outer;
      std::copy(src, src + v.inner, buf.begin() + o * v.inner);
    }
  } else {
    for (int64_t i = 0; i < v.count; ++i) buf[i] = data[unit_offset(v, u, i)];
  }
  std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), std::greater<float>());
}

at::Tensor topk_threshold_cpu(const at::Tensor& acts, int64_t k) {
  at::Tensor storage;
  const UnitView v = make_unit_view(acts, k, storage);
  auto out = at::empty({v.units}, acts.options());
  const float* data = storage.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, v.units, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf;
    for (int64_t u = begin; u < end; ++u) {
      select_unit(data, v, u, k, buf);
      dst[u] = buf[k - 1];
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
    std::vector<float> buf;
    for (int64_t u = begin; u < end; ++u) {
      select_unit(data, v, u, k, buf);
      std::sort(buf.begin(), buf.begin() + k, std::greater<float>());
      std::copy(buf.begin(), buf.begin() + k, dst + u * k);
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
