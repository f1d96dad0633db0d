#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <cstring>

#include "macros.h"

namespace kdfast {

// Where value i of unit u lives. Activations are (N, U, H, W) with H·W contiguous (inner = H·W) or
// (M, U) with any strides (inner = 1): offset = u·s_unit + (i / inner)·s_outer + (i % inner).
struct UnitView {
  int64_t units;
  int64_t count;  // M values per unit
  int64_t inner;
  int64_t s_outer;
  int64_t s_unit;
};

KDFAST_HD int64_t unit_offset(const UnitView& v, int64_t u, int64_t i) {
  return u * v.s_unit + (i / v.inner) * v.s_outer + (i % v.inner);
}

// Order-preserving map float -> uint32: a < b (as floats, no NaN) iff key(a) < key(b), with -0 < +0.
KDFAST_HD uint32_t float_order_key(float x) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(x);
#else
  std::memcpy(&bits, &x, sizeof(bits));
#endif
  // Negative: flip every bit; non-negative: set the sign bit. Branch-free, since signs are random.
  const uint32_t negative = (uint32_t)((int32_t)bits >> 31);
  return bits ^ (negative | 0x80000000u);
}

KDFAST_HD float float_from_order_key(uint32_t key) {
  uint32_t bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float x;
#if defined(__CUDA_ARCH__)
  x = __uint_as_float(bits);
#else
  std::memcpy(&x, &bits, sizeof(x));
#endif
  return x;
}

// Validates acts (float32, 2-D (M, U) or 4-D (N, U, H, W)) and k, and describes its layout.
// A 4-D tensor whose H·W block is not contiguous is copied first; `storage` keeps that copy alive.
inline UnitView make_unit_view(const at::Tensor& acts, int64_t k, at::Tensor& storage) {
  TORCH_CHECK(acts.scalar_type() == at::kFloat, "kdfast: acts must be float32, got ", acts.scalar_type());
  TORCH_CHECK(acts.dim() == 2 || acts.dim() == 4,
              "kdfast: acts must be (M, U) or (N, U, H, W), got a ", acts.dim(), "-D tensor");
  storage = acts;
  UnitView v{};
  if (acts.dim() == 4) {
    const bool hw_contiguous = (acts.size(3) == 1 || acts.stride(3) == 1) &&
                               (acts.size(2) == 1 || acts.stride(2) == acts.size(3));
    if (!hw_contiguous) {
      storage = acts.contiguous();
    }
    v.units = storage.size(1);
    v.inner = storage.size(2) * storage.size(3);
    v.count = storage.size(0) * v.inner;
    v.s_outer = storage.stride(0);
    v.s_unit = storage.stride(1);
  } else {
    v.units = storage.size(1);
    v.inner = 1;
    v.count = storage.size(0);
    v.s_outer = storage.stride(0);
    v.s_unit = storage.stride(1);
  }
  if (v.inner == 0) v.inner = 1;  // H·W == 0 means count == 0; avoid dividing by zero.
  TORCH_CHECK(k >= 1, "kdfast: k must be >= 1, got ", k);
  TORCH_CHECK(k <= v.count, "kdfast: k = ", k, " exceeds the ", v.count, " values per unit");
  return v;
}

}  // namespace kdfast
