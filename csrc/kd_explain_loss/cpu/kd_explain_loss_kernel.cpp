// Fused e2KD loss on the CPU: per row, the temperature-scaled KL divergence between teacher and student
// softmaxes and the cosine between the flattened explanation maps, in one pass over each row's logits and
// one over its maps. Rows are spread over OpenMP threads; sums run in double whatever the input dtype, and
// the batch reduction is a fixed-order loop, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace kdfast {
namespace {

// Columns of the per-row statistics the forward leaves for the backward. A softmax is kept as its raw
// (unscaled) row maximum and log Σ exp((z − max)/T), not as one log-sum-exp: z_j − max is exact for nearby
// values, so p_j = exp((z_j − max)/T − log_z) stays accurate for large logits even in float32 storage.
enum Stat { kMaxStudent = 0, kLogZStudent, kMaxTeacher, kLogZTeacher, kNormStudent, kNormTeacher, kDot, kNumStats };

void check_inputs(const at::Tensor& s_logits, const at::Tensor& t_logits, const at::Tensor& s_maps,
                  const at::Tensor& t_maps, double T, double eps) {
  TORCH_CHECK(s_logits.dim() == 2, "kdfast.kd_explain_loss: student_logits must be (B, K), got ", s_logits.sizes());
  TORCH_CHECK(s_maps.dim() == 2, "kdfast.kd_explain_loss: student_maps must be (B, N), got ", s_maps.sizes());
  TORCH_CHECK(t_logits.sizes() == s_logits.sizes(), "kdfast.kd_explain_loss: teacher_logits must match student_logits ",
              s_logits.sizes(), ", got ", t_logits.sizes());
  TORCH_CHECK(t_maps.sizes() == s_maps.sizes(), "kdfast.kd_explain_loss: teacher_maps must match student_maps ",
              s_maps.sizes(), ", got ", t_maps.sizes());
  TORCH_CHECK(s_maps.size(0) == s_logits.size(0), "kdfast.kd_explain_loss: student_maps has ", s_maps.size(0),
              " rows but student_logits has ", s_logits.size(0));
  TORCH_CHECK(s_logits.size(0) >= 1 && s_logits.size(1) >= 1 && s_maps.size(1) >= 1,
              "kdfast.kd_explain_loss: needs B >= 1 rows, K >= 1 classes and N >= 1 map values, got logits ",
              s_logits.sizes(), " and maps ", s_maps.sizes());
  const auto dtype = s_logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "kdfast.kd_explain_loss: inputs must be float32 or float64, got ", dtype);
  for (const auto* t : {&t_logits, &s_maps, &t_maps}) {
    TORCH_CHECK(t->scalar_type() == dtype, "kdfast.kd_explain_loss: all inputs must share one dtype (", dtype, "), got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == s_logits.device(), "kdfast.kd_explain_loss: all inputs must be on ", s_logits.device());
  }
  TORCH_CHECK(T > 0.0 && std::isfinite(T), "kdfast.kd_explain_loss: temperature T must be a positive number, got ", T);
  TORCH_CHECK(eps > 0.0, "kdfast.kd_explain_loss: eps must be positive, got ", eps);
}

// Rows per parallel chunk: enough that each chunk touches ~32k values.
int64_t row_grain(int64_t values_per_row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, values_per_row)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_explain_loss_cpu(const at::Tensor& s_logits_in,
                                                                   const at::Tensor& t_logits_in,
                                                                   const at::Tensor& s_maps_in,
                                                                   const at::Tensor& t_maps_in, double T, double lam,
                                                                   double eps) {
  check_inputs(s_logits_in, t_logits_in, s_maps_in, t_maps_in, T, eps);
  const auto s_logits = s_logits_in.contiguous(), t_logits = t_logits_in.contiguous();
  const auto s_maps = s_maps_in.contiguous(), t_maps = t_maps_in.contiguous();
  const int64_t B = s_logits.size(0), K = s_logits.size(1), N = s_maps.size(1);
  auto stats = at::empty({B, kNumStats}, s_logits.options());
  std::vector<double> kl(B), cosine(B);

  AT_DISPATCH_FLOATING_TYPES(s_logits.scalar_type(), "kd_explain_loss_cpu", [&] {
    const scalar_t* sl = s_logits.const_data_ptr<scalar_t>();
    const scalar_t* tl = t_logits.const_data_ptr<scalar_t>();
    const scalar_t* sm = s_maps.const_data_ptr<scalar_t>();
    const scalar_t* tm = t_maps.const_data_ptr<scalar_t>();
    scalar_t* st = stats.data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(K + N), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* s = sl + b * K;
        const scalar_t* t = tl + b * K;
        double max_s = -std::numeric_limits<double>::infinity(), max_t = max_s;
        for (int64_t j = 0; j < K; ++j) {
          max_s = std::max(max_s, (double)s[j]);
          max_t = std::max(max_t, (double)t[j]);
        }
        // KL(p_t || p_s) = sum_j p_t,j [(t_j - max_t) - (s_j - max_s)] / T - (log z_t - log z_s),
        // with p_t,j = exp((t_j - max_t) / T) / z_t: every term is a difference from its row's maximum.
        double z_s = 0.0, z_t = 0.0, weighted_gap = 0.0;
        for (int64_t j = 0; j < K; ++j) {
          const double x = ((double)s[j] - max_s) / T, y = ((double)t[j] - max_t) / T;
          const double e_t = std::exp(y);
          z_s += std::exp(x);
          z_t += e_t;
          weighted_gap += e_t * (y - x);
        }
        const double log_z_s = std::log(z_s), log_z_t = std::log(z_t);
        kl[b] = weighted_gap / z_t - (log_z_t - log_z_s);

        const scalar_t* ms = sm + b * N;
        const scalar_t* mt = tm + b * N;
        double dot = 0.0, ss = 0.0, tt = 0.0;
        for (int64_t i = 0; i < N; ++i) {
          const double u = (double)ms[i], v = (double)mt[i];
          dot += u * v;
          ss += u * u;
          tt += v * v;
        }
        const double norm_s = std::sqrt(ss), norm_t = std::sqrt(tt);
        // Each norm is clamped at eps (as torch.nn.functional.cosine_similarity does): a zero map has cos = 0.
        cosine[b] = dot / (std::max(norm_s, eps) * std::max(norm_t, eps));
        scalar_t* row = st + b * kNumStats;
        row[kMaxStudent] = (scalar_t)max_s;  // an input value: exact in the input dtype
        row[kLogZStudent] = (scalar_t)log_z_s;
        row[kMaxTeacher] = (scalar_t)max_t;
        row[kLogZTeacher] = (scalar_t)log_z_t;
        row[kNormStudent] = (scalar_t)norm_s;
        row[kNormTeacher] = (scalar_t)norm_t;
        row[kDot] = (scalar_t)dot;
      }
    });
  });

  double kl_sum = 0.0, gap_sum = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    kl_sum += kl[b];
    gap_sum += 1.0 - cosine[b];
  }
  auto kd = at::scalar_tensor(T * T * kl_sum / (double)B, s_logits.options());
  auto explanation = at::scalar_tensor(lam * gap_sum / (double)B, s_logits.options());
  return {kd, explanation, stats};
}

std::tuple<at::Tensor, at::Tensor> kd_explain_loss_backward_cpu(const at::Tensor& grad_kd, const at::Tensor& grad_explanation,
                                                                const at::Tensor& s_logits_in, const at::Tensor& t_logits_in,
                                                                const at::Tensor& s_maps_in, const at::Tensor& t_maps_in,
                                                                const at::Tensor& stats_in, double T, double lam, double eps) {
  check_inputs(s_logits_in, t_logits_in, s_maps_in, t_maps_in, T, eps);
  const int64_t B = s_logits_in.size(0), K = s_logits_in.size(1), N = s_maps_in.size(1);
  TORCH_CHECK(stats_in.dim() == 2 && stats_in.size(0) == B && stats_in.size(1) == kNumStats &&
                  stats_in.scalar_type() == s_logits_in.scalar_type(),
              "kdfast.kd_explain_loss_backward: stats must be the forward's (B, ", (int)kNumStats, ") output, got ", stats_in.sizes());
  TORCH_CHECK(grad_kd.numel() == 1 && grad_explanation.numel() == 1,
              "kdfast.kd_explain_loss_backward: grad_kd and grad_explanation must be scalars");
  const auto s_logits = s_logits_in.contiguous(), t_logits = t_logits_in.contiguous();
  const auto s_maps = s_maps_in.contiguous(), t_maps = t_maps_in.contiguous(), stats = stats_in.contiguous();
  // d(T^2 mean KL)/ds_j = T (p_s,j - p_t,j) / B;  d(lam mean(1 - cos))/du = -lam/B * dcos/du.
  const double logit_scale = grad_kd.item<double>() * T / (double)B;
  const double map_scale = -grad_explanation.item<double>() * lam / (double)B;
  auto grad_logits = at::empty_like(s_logits);
  auto grad_maps = at::empty_like(s_maps);

  AT_DISPATCH_FLOATING_TYPES(s_logits.scalar_type(), "kd_explain_loss_backward_cpu", [&] {
    const scalar_t* sl = s_logits.const_data_ptr<scalar_t>();
    const scalar_t* tl = t_logits.const_data_ptr<scalar_t>();
    const scalar_t* sm = s_maps.const_data_ptr<scalar_t>();
    const scalar_t* tm = t_maps.const_data_ptr<scalar_t>();
    const scalar_t* st = stats.const_data_ptr<scalar_t>();
    scalar_t* gl = grad_logits.data_ptr<scalar_t>();
    scalar_t* gm = grad_maps.data_ptr<scalar_t>();
    at::parallel_for(0, B, row_grain(K + N), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* row = st + b * kNumStats;
        const double max_s = (double)row[kMaxStudent], log_z_s = (double)row[kLogZStudent];
        const double max_t = (double)row[kMaxTeacher], log_z_t = (double)row[kLogZTeacher];
        for (int64_t j = 0; j < K; ++j) {
          const double p_s = std::exp(((double)sl[b * K + j] - max_s) / T - log_z_s);
          const double p_t = std::exp(((double)tl[b * K + j] - max_t) / T - log_z_t);
          gl[b * K + j] = (scalar_t)(logit_scale * (p_s - p_t));
        }
        const double norm_s = (double)row[kNormStudent];
        const double ns = std::max(norm_s, eps), nt = std::max((double)row[kNormTeacher], eps);
        const double cos = (double)row[kDot] / (ns * nt);
        // dcos/du = v / (ns nt) - cos u / ns^2, the second term only where the student norm is not clamped.
        const double along_teacher = 1.0 / (ns * nt);
        const double along_student = norm_s > eps ? cos / (ns * ns) : 0.0;
        for (int64_t i = 0; i < N; ++i) {
          const double u = (double)sm[b * N + i], v = (double)tm[b * N + i];
          gm[b * N + i] = (scalar_t)(map_scale * (v * along_teacher - u * along_student));
        }
      }
    });
  });
  return {grad_logits, grad_maps};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CPU, m) {
  m.impl("kd_explain_loss", &kd_explain_loss_cpu);
  m.impl("kd_explain_loss_backward", &kd_explain_loss_backward_cpu);
}

}  // namespace kdfast
