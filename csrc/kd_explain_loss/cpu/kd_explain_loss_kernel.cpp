// Fused e2KD loss on the CPU: per row, the temperature-scaled KL divergence between teacher and student
// softmaxes and the cosine between the flattened explanation maps and, with compute_grad, the gradients of the
// two terms w.r.t. the student inputs, written while the row is still in cache (the backward then only scales
// them). Rows are spread over OpenMP threads; sums run in double whatever the input dtype, and the batch
// reduction is a fixed-order loop, so results do not depend on the thread count.
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

// The arguments are validated (with messages naming them) once, by kdfast.ops.kd_explain_loss's wrapper; a
// direct torch.ops call skips that, so the kernel keeps these O(1) checks of what its indexing relies on.
void check_invariants(const at::Tensor& s_logits, const at::Tensor& t_logits, const at::Tensor& s_maps,
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

// Returns (kd, explanation, d kd / d student_logits, d explanation / d student_maps); the two gradients are
// 0-element tensors unless compute_grad.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kd_explain_loss_cpu(
    const at::Tensor& s_logits_in, const at::Tensor& t_logits_in, const at::Tensor& s_maps_in,
    const at::Tensor& t_maps_in, double T, double lam, double eps, bool compute_grad) {
  check_invariants(s_logits_in, t_logits_in, s_maps_in, t_maps_in, T, eps);
  const auto s_logits = s_logits_in.contiguous(), t_logits = t_logits_in.contiguous();
  const auto s_maps = s_maps_in.contiguous(), t_maps = t_maps_in.contiguous();
  const int64_t B = s_logits.size(0), K = s_logits.size(1), N = s_maps.size(1);
  auto grad_logits = compute_grad ? s_logits.new_empty({B, K}) : s_logits.new_empty({0});
  auto grad_maps = compute_grad ? s_maps.new_empty({B, N}) : s_maps.new_empty({0});
  std::vector<double> kl(B), cosine(B);
  // d(T² mean KL)/ds_j = T (p_s,j − p_t,j) / B;  d(lam mean(1 − cos))/du = −lam/B · dcos/du.
  const double logit_scale = T / (double)B, map_scale = -lam / (double)B;

  AT_DISPATCH_FLOATING_TYPES(s_logits.scalar_type(), "kd_explain_loss_cpu", [&] {
    const scalar_t* sl = s_logits.const_data_ptr<scalar_t>();
    const scalar_t* tl = t_logits.const_data_ptr<scalar_t>();
    const scalar_t* sm = s_maps.const_data_ptr<scalar_t>();
    const scalar_t* tm = t_maps.const_data_ptr<scalar_t>();
    scalar_t* gl = compute_grad ? grad_logits.data_ptr<scalar_t>() : nullptr;
    scalar_t* gm = compute_grad ? grad_maps.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, row_grain(K + N), [&](int64_t begin, int64_t end) {
      // exp((z_j − max)/T) of one row, student then teacher, kept for the gradient (no second exp).
      std::vector<double> exps(compute_grad ? 2 * K : 0);
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
          const double e_s = std::exp(x), e_t = std::exp(y);
          z_s += e_s;
          z_t += e_t;
          weighted_gap += e_t * (y - x);
          if (compute_grad) {
            exps[j] = e_s;
            exps[K + j] = e_t;
          }
        }
        kl[b] = weighted_gap / z_t - (std::log(z_t) - std::log(z_s));
        if (compute_grad) {
          for (int64_t j = 0; j < K; ++j) {
            gl[b * K + j] = (scalar_t)(logit_scale * (exps[j] / z_s - exps[K + j] / z_t));
          }
        }

        const scalar_t* ms = sm + b * N;
        const scalar_t* mt = tm + b * N;
        double dot = 0.0, ss = 0.0, tt = 0.0;
        for (int64_t i = 0; i < N; ++i) {
          const double u = (double)ms[i], v = (double)mt[i];
          dot += u * v;
          ss += u * u;
          tt += v * v;
        }
        const double norm_s = std::sqrt(ss);
        // Each norm is clamped at eps (as torch.nn.functional.cosine_similarity does): a zero map has cos = 0.
        const double ns = std::max(norm_s, eps), nt = std::max(std::sqrt(tt), eps);
        const double cos = dot / (ns * nt);
        cosine[b] = cos;
        if (compute_grad) {
          // dcos/du = v / (ns nt) - cos u / ns^2, the second term only where the student norm is not clamped.
          const double along_teacher = 1.0 / (ns * nt);
          const double along_student = norm_s > eps ? cos / (ns * ns) : 0.0;
          for (int64_t i = 0; i < N; ++i) {
            gm[b * N + i] = (scalar_t)(map_scale * ((double)mt[i] * along_teacher - (double)ms[i] * along_student));
          }
        }
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
  return {kd, explanation, grad_logits, grad_maps};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("kd_explain_loss", &kd_explain_loss_cpu); }

}  // namespace kdfast
