// Host emulation of the CUDA top-k (tests only): topk_driver.h's algorithm over a backend that runs each
// kernel's grid on the host with the kernels' own block code (topk_block.h): blocks in shuffled order,
// every phase's threads in a fresh shuffled order (seeded, deterministic), barriers between phases.
#include <ATen/ATen.h>

#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "emulation.h"
#include "topk_threshold/topk_driver.h"

namespace kdfast {
namespace {

struct EmulatedBackend {
  int threads;
  int blocks_x;  // blocks per unit of the grid-stride kernels
  std::mt19937_64 rng;

  // Visits the (block.x, unit) blocks in shuffled order; `run(bx, u, order)` runs the block's phases.
  template <typename Run>
  void grid(int64_t units, int blocks, Run&& run) {
    std::vector<int64_t> ids(units * blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int64_t id : ids) run((int)(id % blocks), id / blocks);
  }
  const std::vector<int>& order() {
    static thread_local std::vector<int> ids;
    ids.resize(threads);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    return ids;
  }
  int64_t first(int bx, int t) const { return (int64_t)bx * threads + t; }
  int64_t stride() const { return (int64_t)blocks_x * threads; }

  void sample(const float* data, const UnitView& v, int64_t size, float* out) {
    grid(v.units, 1, [&](int, int64_t u) {
      for (int t : order()) sample_values(data, v, u, size, out + u * size, t, threads);
    });
  }
  void candidates(const float* data, const UnitView& v, const float* pivots, unsigned long long* counts, float* cand,
                  int64_t cap, unsigned int* nonfinite) {
    grid(v.units, blocks_x, [&](int bx, int64_t u) {
      for (int t : order()) {
        collect_candidates(data, v, u, first(bx, t), stride(), float_order_key(pivots[u]), &counts[u], cand + u * cap, cap,
                           nonfinite);
      }
    });
  }
  // The 1-D grid of the flat read: blocks_x blocks in all.
  void candidates_flat(const float* data, const FlatView& v, const float* pivots, unsigned long long* counts, float* cand,
                       int64_t cap, unsigned int* nonfinite) {
    grid(1, blocks_x, [&](int bx, int64_t) {
      for (int t : order()) collect_candidates_flat(data, v, first(bx, t), stride(), pivots, counts, cand, cap, nonfinite);
    });
  }
  void histogram(const float* data, const UnitView& v, const RadixPass& pass, unsigned long long* hist,
                 unsigned int* nonfinite) {
    std::vector<int> local(pass.bins);
    grid(v.units, blocks_x, [&](int bx, int64_t u) {
      for (int t : order()) histogram_clear(local.data(), pass.bins, t, threads);
      for (int t : order()) histogram_count(data, v, u, first(bx, t), stride(), pass, local.data(), nonfinite);
      for (int t : order()) histogram_flush(local.data(), hist + u * pass.bins, pass.bins, t, threads);
    });
  }
  void select(unsigned long long* hist, const RadixPass& pass, uint32_t* prefix, uint32_t* mask, long long* remaining,
              int64_t units) {
    grid(units, 1, [&](int, int64_t u) {
      select_digit(hist + u * pass.bins, pass.shift, pass.bins, prefix, mask, remaining, u);
      for (int t : order()) clear_row(hist + u * pass.bins, pass.bins, t, threads);
    });
  }
  void keys_to_values(const uint32_t* prefix, float* out, int64_t units) {
    for (int64_t u = 0; u < units; ++u) out[u] = float_from_order_key(prefix[u]);
  }
  void gather(const float* data, const UnitView& v, const uint32_t* prefix, unsigned long long* fill, float* out, int64_t k) {
    grid(v.units, blocks_x, [&](int bx, int64_t u) {
      for (int t : order()) gather_greater(data, v, u, first(bx, t), stride(), prefix[u], &fill[u], out + u * k);
    });
  }
  void fill_ties(const uint32_t* prefix, const long long* remaining, float* out, int64_t k, int64_t units) {
    grid(units, 1, [&](int, int64_t u) {
      for (int t : order()) kdfast::fill_ties(prefix[u], remaining[u], out + u * k, k, t, threads);
    });
  }
};

EmulatedBackend make_backend(int64_t threads, int64_t blocks_x, int64_t seed) {
  TORCH_CHECK(threads >= 1 && threads <= 1024 && blocks_x >= 1,
              "kdfast: emulated grids need 1..1024 threads and >= 1 block per unit, got ", threads, ", ", blocks_x);
  return EmulatedBackend{(int)threads, (int)blocks_x, std::mt19937_64((uint64_t)seed)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, std::string> emulate_topk_cuda(const at::Tensor& acts, int64_t k, int64_t sample,
                                                                  int64_t threads, int64_t blocks_x, int64_t seed) {
  EmulatedBackend backend = make_backend(threads, blocks_x, seed);
  const at::Tensor host = acts.cpu();  // a CPU tensor as it is: the flat read's head follows its address
  const TopkSelection sel = select_topk(backend, host, k, sample);
  const std::string path = !sel.sampled ? "radix" : sel.flat ? "pivot_flat" : "pivot";
  return {topk_threshold_with(backend, host, k, sample), unit_topk_with(backend, host, k, sample), path};
}

}  // namespace kdfast
