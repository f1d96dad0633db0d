"""Fused e2KD loss (Parchami-Araghi et al., ECCV 2024, Eq. 1-3), batch mean over B rows:

    kd          = T² · mean_b KL(softmax(t_b / T) ‖ softmax(s_b / T))
    explanation = lam · mean_b (1 − cos(u_b, v_b)),   cos = u·v / (max(‖u‖, eps) · max(‖v‖, eps))

for student/teacher logits s, t (B, K) and student/teacher explanation maps u, v (B, N) (any (B, ...) shape is
flattened; resize maps to one size first). Each norm is clamped at eps like
torch.nn.functional.cosine_similarity, so a zero map has cos = 0 (explanation term = lam for that row), and
the gradient there is the exact derivative of the clamped formula: −lam/B · v / (eps · max(‖v‖, eps)).

One op call, one validation: kd_explain_loss_terms (every caller's entry point) checks and normalises the
arguments once (check_loss_inputs, errors naming the argument), then calls torch.ops.kdfast.kd_explain_loss,
whose kernels (C++ on the CPU, Triton on CUDA) only assert the invariants their indexing relies on. When the
student inputs require grad the op computes the gradients in its forward (compute_grad=True: d kd/d logits
while a row's logits are in cache, d explanation/d maps right after the row's norms), and its backward (a C++
autograd kernel, csrc/kd_explain_loss/cpu/kd_explain_loss_autograd.cpp) only scales them by the incoming
gradients — exact, because kd depends only on the logits and explanation only on the maps. Without grad (eval, torch.no_grad) no gradient is computed. Gradients flow to the student inputs
only; the teacher's logits and maps are constants (their gradients are None even if they require grad).
"""
import math

import torch

from kdfast import _extension

DEFAULT_EPS = 1e-8
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
    compute_grad = torch.is_grad_enabled() and (args[0].requires_grad or args[2].requires_grad)
    kd, explanation, _, _ = torch.ops.kdfast.kd_explain_loss(*args, float(T), float(lam), float(eps), compute_grad)
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


def _triton_kernel(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps=DEFAULT_EPS,
                   compute_grad=False):
    from kdfast.ops.triton.kd_explain_loss import kd_explain_loss_triton

    return kd_explain_loss_triton(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps, compute_grad)


if _extension.available():

    @torch.library.register_fake("kdfast::kd_explain_loss")
    def _kd_explain_loss_fake(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps=DEFAULT_EPS,
                              compute_grad=False):
        scalar = student_logits.new_empty(())
        if compute_grad:
            return scalar, scalar.clone(), student_logits.new_empty(student_logits.shape), student_maps.new_empty(student_maps.shape)
        return scalar, scalar.clone(), student_logits.new_empty(0), student_maps.new_empty(0)

    torch.library.register_kernel("kdfast::kd_explain_loss", "cuda", _triton_kernel)
