"""Fused e2KD loss (Parchami-Araghi et al., ECCV 2024, Eq. 1-3), batch mean over B rows:

    kd          = T² · mean_b KL(softmax(t_b / T) ‖ softmax(s_b / T))
    explanation = lam · mean_b (1 − cos(u_b, v_b)),   cos = u·v / (max(‖u‖, eps) · max(‖v‖, eps))

for student/teacher logits s, t (B, K) and student/teacher explanation maps u, v (B, N) (any (B, ...) shape is
flattened; resize maps to one size first). Each norm is clamped at eps like
torch.nn.functional.cosine_similarity, so a zero map has cos = 0 (explanation term = lam for that row), and
the gradient there is the exact derivative of the clamped formula: −lam/B · v / (eps · max(‖v‖, eps)).

Forward and backward are fused per row: C++ on the CPU, Triton on CUDA (registered below for the CUDA
dispatch key). The forward leaves per-row statistics (softmax maxima and log-normalisers, map norms, the dot
product) that the backward reuses, so the backward is one elementwise pass. Gradients flow to the student inputs only; the teacher's
logits and maps are constants (their gradients are None even if they require grad).
"""
import math

import torch

from kdfast import _extension

DEFAULT_EPS = 1e-8
# Per-row statistics the forward leaves for the backward (a softmax as raw row max + log Σ exp((z − max)/T)).
STATS_COLUMNS = ("max_student", "log_z_student", "max_teacher", "log_z_teacher", "norm_student", "norm_teacher", "dot")
_WIDENED = (torch.float16, torch.bfloat16)


def _as_loss_input(tensor, name):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension and at least one more, got shape {tuple(tensor.shape)}")
    return tensor.float() if tensor.dtype in _WIDENED else tensor


def check_loss_inputs(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps=DEFAULT_EPS):
    """Validated inputs: (B, K) logits, maps flattened to (B, N), one dtype (float64 if any input is, else
    float32; float16/bfloat16 are widened), one device. Raises naming the offending argument."""
    s_logits = _as_loss_input(student_logits, "student_logits")
    t_logits = _as_loss_input(teacher_logits, "teacher_logits")
    s_maps = _as_loss_input(student_maps, "student_maps")
    t_maps = _as_loss_input(teacher_maps, "teacher_maps")
    if s_logits.dim() != 2:
        raise ValueError(f"student_logits must be (B, K), got shape {tuple(s_logits.shape)}")
    if t_logits.shape != s_logits.shape:
        raise ValueError(f"teacher_logits must match student_logits {tuple(s_logits.shape)}, got {tuple(t_logits.shape)}")
    if t_maps.shape != s_maps.shape:
        raise ValueError(
            f"teacher_maps must match student_maps {tuple(s_maps.shape)}, got {tuple(t_maps.shape)} "
            "(resize the maps to one size first, e.g. kdfast.explain.resize_maps)"
        )
    B, K = s_logits.shape
    if s_maps.shape[0] != B:
        raise ValueError(f"student_maps has {s_maps.shape[0]} rows but student_logits has {B}")
    s_maps, t_maps = s_maps.flatten(1), t_maps.flatten(1)
    if B == 0 or K == 0 or s_maps.shape[1] == 0:
        raise ValueError(
            f"kd_explain_loss needs at least one row, class and map value, got logits {tuple(s_logits.shape)} "
            f"and maps {tuple(s_maps.shape)}"
        )
    devices = {t.device for t in (s_logits, t_logits, s_maps, t_maps)}
    if len(devices) != 1:
        raise ValueError(f"student/teacher logits and maps must be on one device, got {sorted(map(str, devices))}")
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"temperature T must be a positive finite number, got {T!r}")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam)):
        raise ValueError(f"lam must be a finite number, got {lam!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in (s_logits, t_logits, s_maps, t_maps)) else torch.float32
    return tuple(t.to(dtype) for t in (s_logits, t_logits, s_maps, t_maps))


def kd_explain_loss_terms(student_logits, teacher_logits, student_maps, teacher_maps, T=1.0, lam=1.0, eps=DEFAULT_EPS):
    """(kd, explanation) scalars of the fused op; both differentiable w.r.t. the student inputs."""
    args = check_loss_inputs(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps)
    _extension.load()
    kd, explanation, _ = torch.ops.kdfast.kd_explain_loss(*args, float(T), float(lam), float(eps))
    return kd, explanation


def kd_explain_loss(student_logits, teacher_logits, student_maps, teacher_maps, T=1.0, lam=1.0, eps=DEFAULT_EPS):
    """The e2KD loss kd + explanation as one scalar (see the module docstring)."""
    kd, explanation = kd_explain_loss_terms(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps)
    return kd + explanation


def kd_explain_loss_reference(student_logits, teacher_logits, student_maps, teacher_maps, T=1.0, lam=1.0, eps=DEFAULT_EPS):
    """Plain PyTorch (autograd, any float dtype): the same (kd, explanation) written from the formulas."""
    B = student_logits.shape[0]
    log_p_s = torch.log_softmax(student_logits / T, dim=1)
    log_p_t = torch.log_softmax(teacher_logits / T, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    u, v = student_maps.reshape(B, -1), teacher_maps.reshape(B, -1)
    cos = (u * v).sum(dim=1) / (u.norm(dim=1).clamp_min(eps) * v.norm(dim=1).clamp_min(eps))
    return T * T * kl.mean(), lam * (1.0 - cos).mean()


def _triton_forward(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps=DEFAULT_EPS):
    from kdfast.ops.triton.kd_explain_loss import kd_explain_loss_forward

    return kd_explain_loss_forward(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps)


def _triton_backward(grad_kd, grad_explanation, student_logits, teacher_logits, student_maps, teacher_maps, stats, T, lam, eps):
    from kdfast.ops.triton.kd_explain_loss import kd_explain_loss_backward

    return kd_explain_loss_backward(
        grad_kd, grad_explanation, student_logits, teacher_logits, student_maps, teacher_maps, stats, T, lam, eps
    )


def _setup_context(ctx, inputs, output):
    student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps = inputs
    ctx.save_for_backward(student_logits, teacher_logits, student_maps, teacher_maps, output[2])
    ctx.mark_non_differentiable(output[2])
    ctx.T, ctx.lam, ctx.eps = T, lam, eps


def _backward(ctx, grad_kd, grad_explanation, _grad_stats):
    student_logits, teacher_logits, student_maps, teacher_maps, stats = ctx.saved_tensors
    # An unused output (e.g. only kd was backpropagated) arrives as None: it contributed nothing.
    grad_kd = torch.zeros_like(stats[0, 0]) if grad_kd is None else grad_kd
    grad_explanation = torch.zeros_like(stats[0, 0]) if grad_explanation is None else grad_explanation
    grad_logits, grad_maps = torch.ops.kdfast.kd_explain_loss_backward(
        grad_kd, grad_explanation, student_logits, teacher_logits, student_maps, teacher_maps, stats,
        ctx.T, ctx.lam, ctx.eps,
    )
    return grad_logits, None, grad_maps, None, None, None, None


if _extension.available():

    @torch.library.register_fake("kdfast::kd_explain_loss")
    def _kd_explain_loss_fake(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps=DEFAULT_EPS):
        scalar = student_logits.new_empty(())
        return scalar, scalar.clone(), student_logits.new_empty(student_logits.shape[0], len(STATS_COLUMNS))

    @torch.library.register_fake("kdfast::kd_explain_loss_backward")
    def _kd_explain_loss_backward_fake(grad_kd, grad_explanation, student_logits, teacher_logits, student_maps,
                                       teacher_maps, stats, T, lam, eps):
        return torch.empty_like(student_logits), torch.empty_like(student_maps)

    torch.library.register_autograd("kdfast::kd_explain_loss", _backward, setup_context=_setup_context)
    torch.library.register_kernel("kdfast::kd_explain_loss", "cuda", _triton_forward)
    torch.library.register_kernel("kdfast::kd_explain_loss_backward", "cuda", _triton_backward)
