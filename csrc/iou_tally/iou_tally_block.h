#pragma once
// The IoU tally of one (image, unit) map as a CUDA-style block: phases separated by barriers, each phase a
// per-thread function of (thread, thread count). The CUDA kernel runs it with 256 threads and
// __syncthreads() between phases; the CPU kernel runs it with one thread; the host emulation runs it with
// many threads in shuffled order (tests). No ATen here, so the kernels compile quickly on their own.
#include <cstdint>

#include "macros.h"

namespace kdfast {

// Half-pixel bilinear upsampling (align_corners=False, source index clamped at 0, edge-replicated):
// the source rows/columns and weight for output index `dst` of an `in_size` -> `out_size` resize.
// Everything is double so that the CPU and CUDA kernels (and the float64 reference) agree exactly.
struct LerpIndex {
  int i0, i1;
  double t;
};

KDFAST_HD LerpIndex source_index(int dst, int in_size, int out_size) {
  const double scale = (double)in_size / (double)out_size;
  double src = scale * ((double)dst + 0.5) - 0.5;
  if (src < 0.0) src = 0.0;
  int i0 = (int)src;
  if (i0 > in_size - 1) i0 = in_size - 1;
  const int i1 = i0 < in_size - 1 ? i0 + 1 : i0;
  return {i0, i1, src - (double)i0};
}

// a + t·(b − a): exact when a == b (so a constant map upsamples to exactly its value) and never
// outside [min(a, b), max(a, b)], so a map whose maximum is <= T never yields a pixel > T.
KDFAST_HD double lerp(double a, double b, double t) { return a + t * (b - a); }

// The upsampled value at output pixel (y, x) of an h x w map stored row-major at `map`.
KDFAST_HD double bilinear_at(const float* map, int w, const LerpIndex& ry, const LerpIndex& rx) {
  const double top = lerp((double)map[ry.i0 * w + rx.i0], (double)map[ry.i0 * w + rx.i1], rx.t);
  const double bottom = lerp((double)map[ry.i1 * w + rx.i0], (double)map[ry.i1 * w + rx.i1], rx.t);
  return lerp(top, bottom, ry.t);
}

// An upsampled pixel that is not NaN lies within its source corners, so it can exceed T only if its
// source row pair (and its source column pair) holds a value > T. NaN compares false: it never counts,
// as in the reference, and a NaN-ignoring maximum keeps every skip exact.
KDFAST_HD bool pair_can_exceed(const float* maxima, const LerpIndex& r, double T) {
  return (double)max_ignoring_nan(maxima[r.i0], maxima[r.i1]) > T;
}

constexpr int kTallyMaxCategories = 64;

// Everything one launch shares; pointers already offset to the launch's first image.
struct TallyArgs {
  const float* acts;               // (B, U, h, w)
  const float* thresholds;         // (U,)
  const int32_t* seg;              // (B, P, SH, SW)
  const int32_t* image_labels;     // (B, Q)
  const int64_t* label_category;   // (L,)
  const uint8_t* present;          // (B, C), or null for the category-gated (NetDissect-Lite) denominator
  const LerpIndex* rows;           // (SH,) source rows of every output row
  const LerpIndex* cols;           // (SW,) source columns of every output column
  int U, h, w, P, SH, SW, Q, L, C;
  unsigned long long* inter;       // (U, L) += intersections
  unsigned long long* act;         // (U, C) += activations
  float* scratch;                  // (launch's blocks, h + w) maxima of maps too large for shared memory, or null
};

// A block's shared memory: `row_max` (h floats) and `col_max` (w floats) live in dynamic shared memory
// (or, for maps too large for it, in the block's slice of TallyArgs::scratch).
struct TallyShared {
  int touched[kTallyMaxCategories];
  unsigned long long count;
  int y_lo, y_hi, x_lo, x_hi;  // bounding box of output pixels whose row and column pairs can exceed T
};

// Bytes of dynamic shared memory a block needs for an h x w map.
inline int64_t tally_dynamic_bytes(int64_t h, int64_t w) { return (h + w) * (int64_t)sizeof(float); }

constexpr int64_t kTallyMaxDynamicBytes = 48 * 1024;  // the default per-block limit, no opt-in needed

// Maps with h + w > 12288 keep their maxima in global memory (one slice per block of the launch) instead.
inline bool tally_maxima_in_global(int64_t h, int64_t w) { return tally_dynamic_bytes(h, w) > kTallyMaxDynamicBytes; }

// Where block `block` (= image within the launch · U + unit) keeps its row and column maxima.
KDFAST_HD float* block_maxima(const TallyArgs& a, float* shared, int64_t block) {
  return a.scratch == nullptr ? shared : a.scratch + block * (int64_t)(a.h + a.w);
}

struct TallyBlock {
  const TallyArgs& a;
  TallyShared& s;
  float* row_max;
  float* col_max;
  int b, u;
  const float* map;
  double T;

  KDFAST_HD TallyBlock(const TallyArgs& args, TallyShared& shared, float* dynamic, int image, int unit)
      : a(args), s(shared), row_max(dynamic), col_max(dynamic + args.h), b(image), u(unit),
        map(args.acts + ((int64_t)image * args.U + unit) * args.h * args.w), T((double)args.thresholds[unit]) {}

  // Phase 1: row and column maxima of the raw map; clear the block's tallies.
  KDFAST_HD void maxima(int t, int n) {
    for (int r = t; r < a.h; r += n) {
      float m = map[r * a.w];
      for (int c = 1; c < a.w; ++c) m = max_ignoring_nan(m, map[r * a.w + c]);
      row_max[r] = m;
    }
    for (int c = t; c < a.w; c += n) {
      float m = map[c];
      for (int r = 1; r < a.h; ++r) m = max_ignoring_nan(m, map[r * a.w + c]);
      col_max[c] = m;
    }
    for (int c = t; c < kTallyMaxCategories; c += n) s.touched[c] = 0;
    if (t == 0) {
      s.count = 0;
      s.y_lo = a.SH, s.y_hi = -1, s.x_lo = a.SW, s.x_hi = -1;
    }
  }

  // Phase 2: false (for every thread alike) when the map's maximum is <= T, i.e. no pixel can be active
  // (most maps at q = 0.5%); else narrows the bounding box of the output rows and columns that can be.
  KDFAST_HD bool bound(int t, int n) {
    float m = row_max[0];
    for (int r = 1; r < a.h; ++r) m = max_ignoring_nan(m, row_max[r]);
    if (!((double)m > T)) return false;
    for (int y = t; y < a.SH; y += n) {
      if (pair_can_exceed(row_max, a.rows[y], T)) shared_min(&s.y_lo, y), shared_max(&s.y_hi, y);
    }
    for (int x = t; x < a.SW; x += n) {
      if (pair_can_exceed(col_max, a.cols[x], T)) shared_min(&s.x_lo, x), shared_max(&s.x_hi, x);
    }
    return true;
  }

  // Phase 3: thresholds the upsampled pixels of the bounding box; tallies pixel labels. Returns this
  // thread's active pixel count (the caller sums them into s.count).
  KDFAST_HD unsigned int pixels(int t, int n) {
    const int rx_count = s.x_hi - s.x_lo + 1, ry_count = s.y_hi - s.y_lo + 1;
    if (rx_count <= 0 || ry_count <= 0 || t >= rx_count * ry_count) return 0;
    const int64_t plane = (int64_t)a.SH * a.SW;
    const int32_t* planes = a.seg + (int64_t)b * a.P * plane;
    unsigned long long* inter_row = a.inter + (int64_t)u * a.L;
    // Walk the box with stride n without a divide per pixel: (y, x) advances by (n / width, n % width).
    const int step_y = n / rx_count, step_x = n - step_y * rx_count;
    int y = s.y_lo + t / rx_count, x = s.x_lo + t % rx_count;
    unsigned int local = 0;
    for (; y <= s.y_hi; y += step_y, x += step_x) {
      if (x > s.x_hi) x -= rx_count, ++y;
      if (y > s.y_hi) break;
      const LerpIndex ry = a.rows[y], rx = a.cols[x];
      if (!pair_can_exceed(row_max, ry, T) || !pair_can_exceed(col_max, rx, T)) continue;
      if (!(bilinear_at(map, a.w, ry, rx) > T)) continue;
      ++local;
      const int64_t pix = (int64_t)y * a.SW + x;
      for (int p = 0; p < a.P; ++p) {
        const int32_t label = planes[p * plane + pix];
        if (label == 0) continue;
        shared_add(&inter_row[label], 1ULL);
        const int64_t c = a.label_category[label];
        if (c >= 0) s.touched[c] = 1;
      }
    }
    return local;
  }

  // Phase 4 (after s.count is complete): image-level labels cover every active pixel.
  KDFAST_HD void image_labels(int t, int n) {
    const unsigned long long count = s.count;
    if (count == 0) return;
    unsigned long long* inter_row = a.inter + (int64_t)u * a.L;
    for (int q = t; q < a.Q; q += n) {
      const int32_t label = a.image_labels[(int64_t)b * a.Q + q];
      if (label == 0) continue;
      shared_add(&inter_row[label], count);
      const int64_t c = a.label_category[label];
      if (c >= 0) s.touched[c] = 1;
    }
  }

  // Phase 5: the unit's active pixels count for every category its region touched (or, for the original
  // NetDissect denominator, every category present in the image).
  KDFAST_HD void activations(int t, int n) {
    const unsigned long long count = s.count;
    if (count == 0) return;
    for (int c = t; c < a.C; c += n) {
      const bool counts = a.present == nullptr ? s.touched[c] != 0 : a.present[(int64_t)b * a.C + c] != 0;
      if (counts) shared_add(&a.act[(int64_t)u * a.C + c], count);
    }
  }
};

}  // namespace kdfast
