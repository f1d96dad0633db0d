#pragma once
// Per-thread pieces of the CUDA top-k kernels (radix histograms, candidate compaction, gathers), shared by
// the kernels (topk_kernels.cuh) and the host emulation the tests run. No ATen here, so the kernels compile
// quickly on their own.
#include <cstdint>
#include <cstring>
#include <stdexcept>

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

// x − x is 0 exactly for finite x (NaN for NaN and ±Inf); no libm call, same on host and device.
KDFAST_HD bool is_finite_value(float x) { return x - x == 0.0f; }

// Visits unit u's values first, first + stride, ... (a grid-stride loop) four loads at a time, so that four
// independent loads are in flight; the (outer, inner) position advances by adds, with no divide per value.
template <typename Visit>
KDFAST_HD void for_each_strided(const float* __restrict__ data, const UnitView& v, int64_t u, int64_t first,
                                int64_t stride, Visit&& visit) {
  if (first >= v.count) return;
  constexpr int kUnroll = 4;
  const float* base = data + u * v.s_unit;
  const int64_t step_o = stride / v.inner, step_r = stride - step_o * v.inner;  // once per thread
  int64_t o = first / v.inner, r = first - o * v.inner;
  for (int64_t i = first; i < v.count; i += kUnroll * stride) {
    float x[kUnroll];
    bool ok[kUnroll];
    KDFAST_UNROLL
    for (int j = 0; j < kUnroll; ++j) {
      ok[j] = i + j * stride < v.count;
      x[j] = ok[j] ? base[o * v.s_outer + r] : 0.0f;
      o += step_o, r += step_r;
      if (r >= v.inner) r -= v.inner, ++o;
    }
    KDFAST_UNROLL
    for (int j = 0; j < kUnroll; ++j) {
      if (ok[j]) visit(x[j]);
    }
  }
}

// The flat layout: a contiguous (N, U, H, W) tensor, or a row-major (M, U) one (H·W = 1), is ONE array in
// which value f belongs to unit (f / inner) % units. The one full read of the top-k streams it in 16-B
// vectors (a unit's runs of H·W values, e.g. 49, are not 16-B aligned, so the per-unit walk above loads 4 B
// at a time); the values before the first 16-B aligned address (`head`, 0..3) and after the last whole
// vector (the tail, 0..3) are read one by one.
struct FlatView {
  int64_t total;    // values in all (= units · count)
  int64_t head;     // values before the first 16-B aligned address
  int64_t vectors;  // whole 16-B vectors after the head
  int32_t inner, units;
};

// The flat view of `data` when the layout is flat (units and inner fit 32 bits, the address is 4-B aligned);
// else `vectors` < 0 (the caller takes the per-unit walk).
KDFAST_HD FlatView make_flat_view(const UnitView& v, const float* data) {
  FlatView f{0, 0, -1, 0, 0};
  const uintptr_t address = (uintptr_t)data;
  const bool flat = v.s_unit == v.inner && v.s_outer == v.units * v.inner && v.inner < (int64_t(1) << 31) &&
                    v.units < (int64_t(1) << 31) && address % sizeof(float) == 0;
  if (!flat) return f;
  f.total = v.units * v.count;
  f.head = (int64_t)((16 - address % 16) % 16 / sizeof(float));
  if (f.head > f.total) f.head = f.total;
  f.vectors = (f.total - f.head) / 4;
  f.inner = (int32_t)v.inner, f.units = (int32_t)v.units;
  return f;
}

// Unit and position within the unit's run of `inner` values of a flat value: it advances by adds and
// compares, so the hot loop has no divide (the 64-bit divides in unit_cursor run once per thread).
struct UnitCursor {
  int32_t unit, r;
};

KDFAST_HD UnitCursor unit_cursor(int64_t f, const FlatView& v) {
  const int64_t run = f / v.inner;
  return {(int32_t)(run % v.units), (int32_t)(f - run * v.inner)};
}

KDFAST_HD void cursor_next(UnitCursor& c, const FlatView& v) {
  if (++c.r == v.inner) {
    c.r = 0;
    if (++c.unit == v.units) c.unit = 0;
  }
}

// c += step, where step = unit_cursor(d) of a distance d: r stays below 2·inner and unit below 2·units
// before the wrap, so one subtraction each restores them.
KDFAST_HD void cursor_advance(UnitCursor& c, const UnitCursor& step, const FlatView& v) {
  c.r += step.r, c.unit += step.unit;
  if (c.r >= v.inner) c.r -= v.inner, ++c.unit;
  if (c.unit >= v.units) c.unit -= v.units;
}

// Four values from a 16-B aligned address: one 128-bit load on the GPU (a misaligned one faults there, so the
// host emulation refuses it too).
KDFAST_HD void load_vector(const float* __restrict__ p, float out[4]) {
#if defined(__CUDA_ARCH__)
  const float4 q = *reinterpret_cast<const float4*>(p);
  out[0] = q.x, out[1] = q.y, out[2] = q.z, out[3] = q.w;
#else
  if ((uintptr_t)p % 16 != 0) throw std::logic_error("kdfast: a 16-B vector load from a misaligned address");
  std::memcpy(out, p, 4 * sizeof(float));
#endif
}

// Visits every value of the flat array as visit(unit, x): thread `first` of a grid of `stride` threads takes
// vectors first, first + stride, ..., two in flight (32 B per thread), and head/tail value `first`.
template <typename Visit>
KDFAST_HD void for_each_flat(const float* __restrict__ data, const FlatView& v, int64_t first, int64_t stride,
                             Visit&& visit) {
  const int64_t tail_start = v.head + 4 * v.vectors;
  if (first < v.head) visit(unit_cursor(first, v).unit, data[first]);
  if (first < v.total - tail_start) visit(unit_cursor(tail_start + first, v).unit, data[tail_start + first]);
  if (first >= v.vectors) return;
  constexpr int kVectors = 2;
  const float* aligned = data + v.head;
  const UnitCursor step = unit_cursor(4 * kVectors * stride, v);
  UnitCursor at[kVectors];
  KDFAST_UNROLL
  for (int j = 0; j < kVectors; ++j) at[j] = unit_cursor(v.head + 4 * (first + j * stride), v);
  for (int64_t i = first; i < v.vectors; i += kVectors * stride) {
    float x[kVectors][4];
    bool ok[kVectors];
    KDFAST_UNROLL
    for (int j = 0; j < kVectors; ++j) {
      ok[j] = i + j * stride < v.vectors;
      if (ok[j]) load_vector(aligned + 4 * (i + j * stride), x[j]);
    }
    KDFAST_UNROLL
    for (int j = 0; j < kVectors; ++j) {
      if (!ok[j]) continue;
      UnitCursor c = at[j];
      KDFAST_UNROLL
      for (int l = 0; l < 4; ++l) {
        visit(c.unit, x[j][l]);
        cursor_next(c, v);
      }
      cursor_advance(at[j], step, v);
    }
  }
}

// A slot in a per-unit output row: on the GPU one atomic per warp (the block works on one unit, so
// every lane that asks shares the counter); on the host a plain increment.
KDFAST_HD unsigned long long claim_slot(unsigned long long* counter) {
#if defined(__CUDA_ARCH__)
  const unsigned int active = __activemask();
  const int lane = threadIdx.x & 31, leader = __ffs(active) - 1;
  unsigned long long base = 0;
  if (lane == leader) base = atomicAdd(counter, (unsigned long long)__popc(active));
  base = __shfl_sync(active, base, leader);
  return base + __popc(active & ((1u << lane) - 1u));
#else
  return (*counter)++;
#endif
}

// A slot in a counter that lanes of one warp may not share: one atomic per claim.
KDFAST_HD unsigned long long claim_any_slot(unsigned long long* counter) {
#if defined(__CUDA_ARCH__)
  return atomicAdd(counter, 1ULL);
#else
  return (*counter)++;
#endif
}

// One radix pass narrows each unit's k-th largest key: keys matching the unit's prefix (under mask)
// are histogrammed by their digit (key >> shift) & (bins − 1).
struct RadixPass {
  const uint32_t* prefix;
  const uint32_t* mask;
  int shift, bins;
};

KDFAST_HD void histogram_clear(int* local, int bins, int t, int n) {
  for (int i = t; i < bins; i += n) local[i] = 0;
}

// `nonfinite` (may be null) counts NaN/Inf values: the first full read doubles as the finiteness check.
KDFAST_HD void histogram_count(const float* data, const UnitView& v, int64_t u, int64_t first, int64_t stride,
                               const RadixPass& p, int* local, unsigned int* nonfinite) {
  const uint32_t pre = p.prefix[u], msk = p.mask[u];
  unsigned int bad = 0;
  for_each_strided(data, v, u, first, stride, [&](float x) {
    bad += !is_finite_value(x);
    const uint32_t key = float_order_key(x);
    if ((key & msk) == pre) shared_add(&local[(key >> p.shift) & (p.bins - 1)], 1);
  });
  if (nonfinite != nullptr && bad) shared_add(nonfinite, bad);
}

KDFAST_HD void histogram_flush(const int* local, unsigned long long* hist_row, int bins, int t, int n) {
  for (int i = t; i < bins; i += n) {
    if (local[i]) shared_add(&hist_row[i], (unsigned long long)local[i]);
  }
}

// Thread 0 of unit u's block: the digit holding the unit's remaining k-th largest key extends the prefix.
KDFAST_HD void select_digit(const unsigned long long* hist_row, int shift, int bins, uint32_t* prefix,
                            uint32_t* mask, long long* remaining, int64_t u) {
  long long k = remaining[u];
  for (int d = bins - 1; d >= 0; --d) {
    const long long c = (long long)hist_row[d];
    if (k <= c) {
      prefix[u] |= (uint32_t)d << shift;
      mask[u] |= (uint32_t)(bins - 1) << shift;
      remaining[u] = k;
      return;
    }
    k -= c;
  }
}

KDFAST_HD void clear_row(unsigned long long* hist_row, int bins, int t, int n) {
  for (int i = t; i < bins; i += n) hist_row[i] = 0;
}

// The one full read of the sampled-pivot path: every value whose key is >= the unit's pivot key goes to
// the unit's candidate row (values beyond `cap` are counted, not written: the caller then falls back).
KDFAST_HD void collect_candidates(const float* data, const UnitView& v, int64_t u, int64_t first, int64_t stride,
                                  uint32_t pivot_key, unsigned long long* count, float* cand_row, int64_t cap,
                                  unsigned int* nonfinite) {
  unsigned int bad = 0;
  for_each_strided(data, v, u, first, stride, [&](float x) {
    bad += !is_finite_value(x);
    if (float_order_key(x) >= pivot_key) {
      const unsigned long long slot = claim_slot(count);
      if (slot < (unsigned long long)cap) cand_row[slot] = x;
    }
  });
  if (bad) shared_add(nonfinite, bad);
}

// collect_candidates over the flat array: each value's unit comes from the cursor, so a warp's lanes may
// hold different units and claim their slots with one atomic each (candidates are ~1% of the values).
KDFAST_HD void collect_candidates_flat(const float* __restrict__ data, const FlatView& v, int64_t first, int64_t stride,
                                       const float* __restrict__ pivots, unsigned long long* counts, float* candidates,
                                       int64_t cap, unsigned int* nonfinite) {
  unsigned int bad = 0;
  int32_t pivot_unit = -1;
  uint32_t pivot_key = 0;
  for_each_flat(data, v, first, stride, [&](int32_t u, float x) {
    bad += !is_finite_value(x);
    if (u != pivot_unit) pivot_unit = u, pivot_key = float_order_key(pivots[u]);  // a new run: its pivot
    if (float_order_key(x) >= pivot_key) {
      const unsigned long long slot = claim_any_slot(&counts[u]);
      if (slot < (unsigned long long)cap) candidates[(int64_t)u * cap + slot] = x;
    }
  });
  if (bad) shared_add(nonfinite, bad);
}

// Writes every value strictly above the unit's k-th largest key to the front of its output row.
KDFAST_HD void gather_greater(const float* data, const UnitView& v, int64_t u, int64_t first, int64_t stride,
                              uint32_t kth, unsigned long long* fill, float* out_row) {
  for_each_strided(data, v, u, first, stride, [&](float x) {
    if (float_order_key(x) > kth) out_row[claim_slot(fill)] = x;
  });
}

// A deterministic, evenly spaced sample of unit u's values (the sampled-pivot path's input).
KDFAST_HD void sample_values(const float* data, const UnitView& v, int64_t u, int64_t size, float* out_row, int t,
                             int n) {
  for (int64_t j = t; j < size; j += n) out_row[j] = data[unit_offset(v, u, j * v.count / size)];
}

// The rest of each row holds copies of the k-th largest value (there are exactly `remaining` of them).
KDFAST_HD void fill_ties(uint32_t kth, long long remaining, float* out_row, int64_t k, int t, int n) {
  const float value = float_from_order_key(kth);
  for (int64_t j = k - remaining + t; j < k; j += n) out_row[j] = value;
}

}  // namespace kdfast
