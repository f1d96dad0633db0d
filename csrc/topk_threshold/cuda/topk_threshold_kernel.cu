// Exact per-unit top-k on the GPU by radix select over order-preserving float keys: three histogram
// passes (11 + 11 + 10 bits) narrow every unit to its k-th largest key, with no sort of the M values.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "topk_threshold/topk_threshold.h"

namespace kdfast {
namespace {

constexpr int kThreads = 256;
constexpr int kPasses = 3;
constexpr int kBits[kPasses] = {11, 11, 10};
constexpr int kShift[kPasses] = {21, 10, 0};
constexpr int kMaxBins = 1 << 11;

__global__ void radix_histogram_kernel(const float* __restrict__ data, UnitView v,
                                       const uint32_t* __restrict__ prefix, const uint32_t* __restrict__ mask,
                                       int shift, int bins, unsigned long long* __restrict__ hist) {
  __shared__ int local[kMaxBins];
  const int64_t u = blockIdx.y;
  for (int i = threadIdx.x; i < bins; i += blockDim.x) local[i] = 0;
  __syncthreads();
  const uint32_t pre = prefix[u], msk = mask[u];
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < v.count; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t key = float_order_key(data[unit_offset(v, u, i)]);
    if ((key & msk) == pre) atomicAdd(&local[(key >> shift) & (bins - 1)], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < bins; i += blockDim.x) {
    if (local[i]) atomicAdd(&hist[u * bins + i], (unsigned long long)local[i]);
  }
}

// One block per unit: find the digit holding the unit's remaining k-th largest key, extend the prefix,
// and clear the histogram row for the next pass.
__global__ void radix_select_kernel(unsigned long long* __restrict__ hist, uint32_t* __restrict__ prefix,
                                    uint32_t* __restrict__ mask, long long* __restrict__ remaining, int shift,
                                    int bins) {
  const int64_t u = blockIdx.x;
  unsigned long long* row = hist + u * bins;
  if (threadIdx.x == 0) {
    long long k = remaining[u];
    for (int d = bins - 1; d >= 0; --d) {
      const long long c = (long long)row[d];
      if (k <= c) {
        prefix[u] |= (uint32_t)d << shift;
        mask[u] |= (uint32_t)(bins - 1) << shift;
        remaining[u] = k;
        break;
      }
      k -= c;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < bins; i += blockDim.x) row[i] = 0;
}

__global__ void keys_to_values_kernel(const uint32_t* __restrict__ prefix, float* __restrict__ out, int64_t units) {
  const int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (u < units) out[u] = float_from_order_key(prefix[u]);
}

// Writes every value strictly above the unit's threshold key to the front of its output row.
__global__ void gather_greater_kernel(const float* __restrict__ data, UnitView v,
                                      const uint32_t* __restrict__ prefix, unsigned long long* __restrict__ fill,
                                      float* __restrict__ out, int64_t k) {
  const int64_t u = blockIdx.y;
  const uint32_t kth = prefix[u];
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < v.count; i += (int64_t)gridDim.x * blockDim.x) {
    const float x = data[unit_offset(v, u, i)];
    if (float_order_key(x) > kth) out[u * k + (int64_t)atomicAdd(&fill[u], 1ULL)] = x;
  }
}

// The rest of each row holds copies of the k-th largest value (there are exactly `remaining` of them).
__global__ void fill_ties_kernel(const uint32_t* __restrict__ prefix, const long long* __restrict__ remaining,
                                 float* __restrict__ out, int64_t k) {
  const int64_t u = blockIdx.x;
  const float kth = float_from_order_key(prefix[u]);
  for (int64_t j = k - remaining[u] + threadIdx.x; j < k; j += blockDim.x) out[u * k + j] = kth;
}

// Blocks per unit: enough to stream each unit's M values with ~16 per thread, ~8k blocks in all.
dim3 unit_grid(const UnitView& v) {
  const int64_t wanted = (v.count + kThreads * 16 - 1) / (kThreads * 16);
  const int64_t cap = std::max<int64_t>(1, 8192 / v.units);
  return dim3((unsigned)std::max<int64_t>(1, std::min(wanted, cap)), (unsigned)v.units);
}

// Validates acts and runs the three radix passes: afterwards `prefix[u]` is the order key of unit u's k-th
// largest value and `remaining[u]` how many copies of it belong to the top k.
struct RadixSelection {
  at::Tensor storage;  // acts, or a copy with a contiguous H·W block
  UnitView v;
  at::Tensor prefix, mask, remaining;
  cudaStream_t stream;

  RadixSelection(const at::Tensor& acts, int64_t k) : v(make_unit_view(acts, k, storage)) {
    TORCH_CHECK(v.units <= 65535, "kdfast: at most 65535 units on CUDA, got ", v.units);
    stream = at::cuda::getCurrentCUDAStream();
    const auto opts = acts.options();
    prefix = at::zeros({v.units}, opts.dtype(at::kInt));
    mask = at::zeros({v.units}, opts.dtype(at::kInt));
    remaining = at::full({v.units}, k, opts.dtype(at::kLong));
    if (v.units == 0) return;
    auto hist = at::zeros({v.units, kMaxBins}, opts.dtype(at::kLong));
    auto* h = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
    for (int p = 0; p < kPasses; ++p) {
      const int bins = 1 << kBits[p];
      radix_histogram_kernel<<<unit_grid(v), kThreads, 0, stream>>>(data(), v, keys(), mask_keys(), kShift[p], bins, h);
      radix_select_kernel<<<(unsigned)v.units, kThreads, 0, stream>>>(
          h, keys(), mask_keys(), reinterpret_cast<long long*>(remaining.data_ptr<int64_t>()), kShift[p], bins);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const float* data() const { return storage.const_data_ptr<float>(); }
  uint32_t* keys() { return reinterpret_cast<uint32_t*>(prefix.data_ptr<int>()); }
  uint32_t* mask_keys() { return reinterpret_cast<uint32_t*>(mask.data_ptr<int>()); }
};

at::Tensor topk_threshold_cuda(const at::Tensor& acts, int64_t k) {
  c10::cuda::CUDAGuard guard(acts.device());
  RadixSelection sel(acts, k);
  auto out = at::empty({sel.v.units}, acts.options());
  if (sel.v.units == 0) return out;
  keys_to_values_kernel<<<(unsigned)((sel.v.units + kThreads - 1) / kThreads), kThreads, 0, sel.stream>>>(
      sel.keys(), out.data_ptr<float>(), sel.v.units);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor unit_topk_cuda(const at::Tensor& acts, int64_t k) {
  c10::cuda::CUDAGuard guard(acts.device());
  RadixSelection sel(acts, k);
  auto out = at::empty({sel.v.units, k}, acts.options());
  if (sel.v.units == 0) return out;
  auto fill = at::zeros({sel.v.units}, acts.options().dtype(at::kLong));
  gather_greater_kernel<<<unit_grid(sel.v), kThreads, 0, sel.stream>>>(
      sel.data(), sel.v, sel.keys(), reinterpret_cast<unsigned long long*>(fill.data_ptr<int64_t>()),
      out.data_ptr<float>(), k);
  fill_ties_kernel<<<(unsigned)sel.v.units, kThreads, 0, sel.stream>>>(
      sel.keys(), reinterpret_cast<const long long*>(sel.remaining.const_data_ptr<int64_t>()), out.data_ptr<float>(), k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Rows hold the exact top-k multiset in arbitrary order; sort them (k << M) for a canonical result.
  return std::get<0>(at::sort(out, /*dim=*/1, /*descending=*/true));
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CUDA, m) {
  m.impl("topk_threshold", &topk_threshold_cuda);
  m.impl("unit_topk", &unit_topk_cuda);
}

}  // namespace kdfast
