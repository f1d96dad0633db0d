#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <cstring>

#include "macros.h"
#include "topk_threshold/topk_block.h"

namespace kdfast {

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

inline void check_finite_count(int64_t nonfinite) {
  TORCH_CHECK_VALUE(nonfinite == 0, "kdfast: acts contains ", nonfinite,
                    " NaN or Inf value(s); activations must be finite");
}

}  // namespace kdfast
