// Autograd kernel of kdfast::kd_explain_loss for every device (registered for the Autograd alias key; it lives
// beside the CPU kernel because setup.py compiles csrc/*/cpu). The op computes the per-unit gradients in its
// forward (compute_grad), so the backward is two products: kd depends only on the student logits and the
// explanation term only on the student maps, which makes scaling the whole chain rule. In C++ rather than
// torch.library.register_autograd because the Python autograd.Function cost ≈ 45 µs more host time per
// forward + backward (116 vs 71 µs measured at B = K = 2), more than the kernels themselves at small sizes.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <tuple>

namespace kdfast {
namespace {

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Outputs call_device_kernel(const at::Tensor& s_logits, const at::Tensor& t_logits, const at::Tensor& s_maps,
                           const at::Tensor& t_maps, double T, double lam, double eps, bool compute_grad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kdfast::kd_explain_loss", "")
                       .typed<Outputs(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      double, double, double, bool)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(s_logits, t_logits, s_maps, t_maps, T, lam, eps, compute_grad);
}

// The backward has no derivative of its own (the saved gradients are constants to it), so a second derivative
// would silently miss the loss's Hessian. As Python's @once_differentiable does: with create_graph, the
// gradients carry a node that raises if they are differentiated again.
variable_list once_differentiable(variable_list grads) {
  if (!at::GradMode::is_enabled()) return grads;
  for (auto& grad : grads) {
    if (grad.defined()) {
      grad = grad.detach();
      grad.set_requires_grad(true);
    }
  }
  const auto error = std::make_shared<torch::autograd::DelayedError>(
      "kdfast.kd_explain_loss has no second derivative (its backward scales gradients computed in the forward)",
      (int64_t)grads.size());
  return error->apply(std::move(grads));
}

class KdExplainLoss : public torch::autograd::Function<KdExplainLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& s_logits, const at::Tensor& t_logits,
                               const at::Tensor& s_maps, const at::Tensor& t_maps, double T, double lam, double eps,
                               bool compute_grad) {
    auto [kd, explanation, grad_logits, grad_maps] =
        call_device_kernel(s_logits, t_logits, s_maps, t_maps, T, lam, eps, compute_grad);
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->save_for_backward({grad_logits, grad_maps});
    ctx->mark_non_differentiable({grad_logits, grad_maps});
    return {kd, explanation, grad_logits, grad_maps};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Tensor inputs in order: student_logits 0, teacher_logits 1, student_maps 2, teacher_maps 3 (the teacher's
    // are constants: their gradients stay undefined, i.e. None).
    const bool needs_logits = ctx->needs_input_grad(0), needs_maps = ctx->needs_input_grad(2);
    TORCH_CHECK(!(needs_logits || needs_maps) || ctx->saved_data["compute_grad"].toBool(),
                "kdfast.kd_explain_loss was called with compute_grad=False, so it computed no gradients to "
                "backpropagate; call it with compute_grad=True (kdfast.ops.kd_explain_loss_terms does whenever the "
                "student inputs require grad)");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor none;
    at::Tensor grad_logits, grad_maps;
    {
      at::NoGradGuard products_are_not_recorded;
      grad_logits = needs_logits ? grads[0] * saved[0] : none;
      grad_maps = needs_maps ? grads[1] * saved[1] : none;
    }
    const auto student = once_differentiable({grad_logits, grad_maps});
    return {student[0], none, student[1], none, none, none, none, none};
  }
};

Outputs kd_explain_loss_autograd(const at::Tensor& s_logits, const at::Tensor& t_logits, const at::Tensor& s_maps,
                                 const at::Tensor& t_maps, double T, double lam, double eps, bool compute_grad) {
  const auto out = KdExplainLoss::apply(s_logits, t_logits, s_maps, t_maps, T, lam, eps, compute_grad);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, Autograd, m) { m.impl("kd_explain_loss", &kd_explain_loss_autograd); }

}  // namespace kdfast
