"""torch.ops.kdfast.kd_explain_loss (C++ CPU kernel, Triton kernel under the interpreter) against the e2KD
formula re-derived row by row in float64, autograd on the plain-PyTorch reference, gradcheck and opcheck; the
gradients computed in the forward (compute_grad), none in eval, and one validation per call."""
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kdfast.ops.kd_explain_loss as loss_module
from kdfast import _extension
from kdfast.ops.kd_explain_loss import kd_explain_loss, kd_explain_loss_reference, kd_explain_loss_terms
from conftest import requires_cuda

needs_ext = pytest.mark.skipif(not _extension.available(), reason="kdfast._C is not built")
REPO = Path(__file__).resolve().parents[1]
SHAPES = [(1, 1, 1), (2, 5, 7), (4, 10, 49), (3, 1000, 3136), (7, 3, 2 * 2048 + 5)]


def direct(s, t, u, v, T, lam, eps=1e-8):
    """(kd, explanation, grad wrt s, grad wrt u) from the formulas, one row at a time, float64."""
    s, t, u, v = (x.double() for x in (s, t, u, v))
    B = s.shape[0]
    u, v = u.reshape(B, -1), v.reshape(B, -1)
    kd = ex = 0.0
    grad_s, grad_u = torch.zeros_like(s), torch.zeros_like(u)
    for b in range(B):
        x, y = s[b] / T, t[b] / T
        log_ps = x - (x.max() + torch.log(torch.exp(x - x.max()).sum()))
        log_pt = y - (y.max() + torch.log(torch.exp(y - y.max()).sum()))
        ps, pt = log_ps.exp(), log_pt.exp()
        kd += float((pt * (log_pt - log_ps)).sum())
        nu, nv = float(u[b].norm()), float(v[b].norm())
        cu, cv = max(nu, eps), max(nv, eps)
        cos = float(u[b] @ v[b]) / (cu * cv)
        ex += 1.0 - cos
        grad_s[b] = T * (ps - pt) / B
        grad_u[b] = -lam / B * (v[b] / (cu * cv) - (cos / cu**2 if nu > eps else 0.0) * u[b])
    return T * T * kd / B, lam * ex / B, grad_s, grad_u


def random_inputs(gen, B, K, N, dtype=torch.float64, logit_scale=3.0):
    s = torch.randn(B, K, generator=gen, dtype=dtype) * logit_scale
    t = torch.randn(B, K, generator=gen, dtype=dtype) * logit_scale
    u = torch.rand(B, N, generator=gen, dtype=dtype)  # GradCAM-like: non-negative
    v = torch.randn(B, N, generator=gen, dtype=dtype)  # B-cos-like: signed
    return s, t, u, v


@needs_ext
@pytest.mark.parametrize("B,K,N", SHAPES)
@pytest.mark.parametrize("T,lam", [(1.0, 1.0), (4.0, 5.0), (0.5, 0.2)])
def test_forward_and_backward_match_the_formula(gen, B, K, N, T, lam):
    s, t, u, v = random_inputs(gen, B, K, N)
    s.requires_grad_(True)
    u.requires_grad_(True)
    t.requires_grad_(True)  # a constant for the op whatever its flag
    kd, ex = kd_explain_loss_terms(s, t, u, v, T, lam)
    want_kd, want_ex, want_gs, want_gu = direct(s.detach(), t.detach(), u.detach(), v, T, lam)
    torch.testing.assert_close(kd.item(), want_kd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ex.item(), want_ex, rtol=1e-10, atol=1e-12)
    gk, ge = 0.7, 1.3  # different upstream gradients for the two outputs
    (gk * kd + ge * ex).backward()
    torch.testing.assert_close(s.grad, gk * want_gs, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(u.grad, ge * want_gu, rtol=1e-9, atol=1e-14)
    assert t.grad is None


TERMS_USED = {"both": lambda kd, ex: kd + ex, "kd only": lambda kd, ex: kd, "explanation only": lambda kd, ex: 3.0 * ex}


@needs_ext
@pytest.mark.parametrize("used", TERMS_USED)
@pytest.mark.parametrize("B,K,N", SHAPES[1:4])
def test_backward_equals_autograd_of_the_reference(gen, B, K, N, used):
    """Also when only one term is backpropagated: the other's gradient is zero (the reference leaves it None)."""
    s, t, u, v = random_inputs(gen, B, K, N)
    ours = [x.clone().requires_grad_(True) for x in (s, u)]
    theirs = [x.clone().requires_grad_(True) for x in (s, u)]
    TERMS_USED[used](*kd_explain_loss_terms(ours[0], t, ours[1], v, 4.0, 2.0)).backward()
    TERMS_USED[used](*kd_explain_loss_reference(theirs[0], t, theirs[1], v, 4.0, 2.0)).backward()
    for a, b in zip(ours, theirs):
        want = torch.zeros_like(a) if b.grad is None else b.grad
        torch.testing.assert_close(a.grad, want, rtol=1e-9, atol=1e-14)


@needs_ext
@pytest.mark.parametrize("B,K,N", [(1, 1, 1), (2, 5, 7), (3, 4, 30)])
def test_gradcheck(gen, B, K, N):
    s, t, u, v = random_inputs(gen, B, K, N)
    s.requires_grad_(True)
    u.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: kd_explain_loss_terms(a, t, b, v, 2.0, 3.0), (s, u))


@needs_ext
@pytest.mark.parametrize("compute_grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(gen, dtype, compute_grad):
    s, t, u, v = random_inputs(gen, 3, 6, 20, dtype=dtype)
    s.requires_grad_(compute_grad)
    u.requires_grad_(compute_grad)
    torch.library.opcheck(torch.ops.kdfast.kd_explain_loss.default, (s, t, u, v, 4.0, 1.5, 1e-8, compute_grad))


class OpCalls(TorchDispatchMode):
    """Records the outputs of every torch.ops.kdfast.kd_explain_loss call made under it."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.kdfast.kd_explain_loss.default:
            self.outputs.append(out)
        return out


@needs_ext
def test_gradients_are_computed_in_the_forward_only_when_needed(gen):
    """Training: one op call returns the per-unit gradients (the backward only scales them). Eval (no_grad, or
    no student input requiring grad, e.g. only the teacher's): the op computes none, and a backward through
    the teacher-only case gives the teacher no gradient (it is a constant)."""
    s, t, u, v = random_inputs(gen, 3, 5, 8)
    for grad_needed, context, inputs in [
        (True, torch.enable_grad, (s.clone().requires_grad_(True), t, u, v)),
        (True, torch.enable_grad, (s, t, u.clone().requires_grad_(True), v)),
        (False, torch.no_grad, (s.clone().requires_grad_(True), t, u.clone().requires_grad_(True), v)),
        (False, torch.enable_grad, (s, t.clone().requires_grad_(True), u, v.clone().requires_grad_(True))),
    ]:
        with context(), OpCalls() as calls:
            kd, ex = kd_explain_loss_terms(*inputs, 4.0, 2.0)
        [(_, _, grad_logits, grad_maps)] = calls.outputs
        if grad_needed:
            _, _, want_gs, want_gu = direct(s, t, u, v, 4.0, 2.0)
            torch.testing.assert_close(grad_logits, want_gs, rtol=1e-9, atol=1e-14)
            torch.testing.assert_close(grad_maps, want_gu, rtol=1e-9, atol=1e-14)
        else:
            assert grad_logits.numel() == 0 and grad_maps.numel() == 0
            if kd.requires_grad:
                (kd + ex).backward()
                assert inputs[1].grad is None and inputs[3].grad is None


@needs_ext
def test_backward_needs_compute_grad(gen):
    s, t, u, v = random_inputs(gen, 2, 4, 6)
    kd, _, _, _ = torch.ops.kdfast.kd_explain_loss(s.requires_grad_(True), t, u, v, 1.0, 1.0, 1e-8, False)
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        kd.backward()


@needs_ext
def test_no_silent_second_derivative(gen):
    """The backward scales gradients computed in the forward, so it has no derivative: with create_graph the
    first derivatives are right, and differentiating them again raises instead of missing the Hessian."""
    s, t, u, v = random_inputs(gen, 3, 5, 8)
    a, b = s.clone().requires_grad_(True), u.clone().requires_grad_(True)
    grads = torch.autograd.grad(kd_explain_loss(a, t, b, v, 2.0, 1.0), (a, b), create_graph=True)
    _, _, want_gs, want_gu = direct(s, t, u, v, 2.0, 1.0)
    torch.testing.assert_close(grads, (want_gs, want_gu), rtol=1e-9, atol=1e-14)
    with pytest.raises(RuntimeError, match="no second derivative"):
        sum(g.sum() for g in grads).backward()


@needs_ext
def test_the_arguments_are_validated_once(gen, monkeypatch):
    """check_loss_inputs (the argument-naming checks and dtype/shape normalisation) runs once per loss
    evaluation, forward and backward together, and the op is called once (the backward launches no kernel of
    its own); the kernels only assert invariants."""
    calls = []

    def counted(*args):
        calls.append(args)
        return check(*args)

    check = loss_module.check_loss_inputs
    monkeypatch.setattr(loss_module, "check_loss_inputs", counted)
    s, t, u, v = random_inputs(gen, 3, 5, 8)
    s.requires_grad_(True)
    u.requires_grad_(True)
    with OpCalls() as op_calls:
        kd_explain_loss(s, t, u, v, 2.0, 1.0).backward()
    assert len(calls) == 1 and len(op_calls.outputs) == 1
    assert s.grad is not None and u.grad is not None


@needs_ext
@pytest.mark.parametrize("B,K,N", SHAPES[1:])
def test_float32_close_to_float64(gen, B, K, N):
    s, t, u, v = random_inputs(gen, B, K, N)
    kd, ex = kd_explain_loss_terms(*(x.float() for x in (s, t, u, v)), 4.0, 1.0)
    want_kd, want_ex, _, _ = direct(s, t, u, v, 4.0, 1.0)
    assert kd.dtype == torch.float32
    assert abs(kd.item() - want_kd) <= 1e-5 * max(1.0, want_kd)
    assert abs(ex.item() - want_ex) <= 1e-6


@needs_ext
def test_half_inputs_are_widened(gen):
    s, t, u, v = random_inputs(gen, 2, 5, 9, dtype=torch.float32)
    kd, ex = kd_explain_loss_terms(s.half(), t.bfloat16(), u.half(), v, 2.0, 1.0)
    want_kd, want_ex = kd_explain_loss_reference(s.half().double(), t.bfloat16().double(), u.half().double(), v.double(), 2.0, 1.0)
    assert kd.dtype == torch.float32
    torch.testing.assert_close(kd.double(), want_kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ex.double(), want_ex, rtol=1e-5, atol=1e-6)


@needs_ext
def test_identical_inputs_give_zero_loss_and_gradient(gen):
    s, _, u, _ = random_inputs(gen, 3, 8, 16)
    a, b = s.clone().requires_grad_(True), u.clone().requires_grad_(True)
    kd, ex = kd_explain_loss_terms(a, s, b, 2.5 * u, 4.0, 5.0)  # the cosine ignores scale
    (kd + ex).backward()
    assert abs(kd.item()) < 1e-12 and abs(ex.item()) < 1e-12
    assert a.grad.abs().max() < 1e-12 and b.grad.abs().max() < 1e-12


@needs_ext
def test_zero_maps_use_the_eps_clamp(gen):
    """A zero map has cos = 0 (term = lam); the gradient at a zero student map is −lam/B·v/(eps·‖v‖)."""
    eps, lam, B = 1e-8, 2.0, 3
    s, t, _, v = random_inputs(gen, B, 4, 10)
    zeros = torch.zeros_like(v)
    u = zeros.clone().requires_grad_(True)
    _, ex = kd_explain_loss_terms(s, t, u, v, 1.0, lam, eps)
    ex.backward()
    assert ex.item() == pytest.approx(lam)
    want = -lam / B * v / (eps * v.norm(dim=1, keepdim=True))
    torch.testing.assert_close(u.grad, want, rtol=1e-12, atol=0)

    u = v.clone().requires_grad_(True)
    _, ex = kd_explain_loss_terms(s, t, u, zeros, 1.0, lam, eps)  # zero teacher map: no direction to follow
    ex.backward()
    assert ex.item() == pytest.approx(lam)
    assert torch.equal(u.grad, torch.zeros_like(u))
    _, ex = kd_explain_loss_terms(s, t, zeros, zeros, 1.0, lam, eps)
    assert ex.item() == pytest.approx(lam)


@needs_ext
def test_constant_and_tiny_maps(gen):
    s, t, _, _ = random_inputs(gen, 2, 3, 1)
    u = torch.full((2, 12), 3.0, dtype=torch.float64)
    _, ex = kd_explain_loss_terms(s, t, u, torch.ones_like(u), 1.0, 1.0)
    assert abs(ex.item()) < 1e-15
    v = torch.rand(2, 12, generator=gen, dtype=torch.float64)
    big = kd_explain_loss_terms(s, t, u, v, 1.0, 1.0)[1]
    tiny = kd_explain_loss_terms(s, t, u * 1e-6, v, 1.0, 1.0)[1]  # norms still above eps: same cosine
    torch.testing.assert_close(big, tiny, rtol=1e-12, atol=0)


@needs_ext
def test_large_and_tied_logits(gen):
    s, t, u, v = random_inputs(gen, 4, 50, 6, logit_scale=1e4)
    s[0] = 7.0  # all classes tied
    t[1, :] = t[1, 0]
    a = s.float().requires_grad_(True)
    kd, _ = kd_explain_loss_terms(a, t.float(), u.float(), v.float(), 1.0, 1.0)
    kd.backward()
    want_kd, _, want_gs, _ = direct(s.float(), t.float(), u, v, 1.0, 1.0)
    assert math.isfinite(kd.item()) and torch.isfinite(a.grad).all()
    assert abs(kd.item() - want_kd) <= 1e-6 * want_kd
    torch.testing.assert_close(a.grad.double(), want_gs, rtol=1e-5, atol=1e-7)


@needs_ext
def test_single_class_has_no_kd_term(gen):
    s, t, u, v = random_inputs(gen, 3, 1, 5)
    a = s.clone().requires_grad_(True)
    kd, _ = kd_explain_loss_terms(a, t, u, v, 4.0, 1.0)
    kd.backward()
    assert kd.item() == 0.0 and torch.equal(a.grad, torch.zeros_like(a))


@needs_ext
def test_maps_of_any_shape_are_flattened(gen):
    s, t, u, v = random_inputs(gen, 2, 4, 2 * 6 * 5)
    flat = kd_explain_loss(s, t, u, v, 2.0, 1.0)
    shaped = kd_explain_loss(s, t, u.reshape(2, 2, 6, 5), v.reshape(2, 2, 6, 5), 2.0, 1.0)
    assert torch.equal(flat, shaped)


@needs_ext
@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: dict(a, teacher_maps=a["teacher_maps"][:, :-1]), "teacher_maps must match"),
        (lambda a: dict(a, teacher_logits=a["teacher_logits"][:1]), "teacher_logits must match"),
        (lambda a: dict(a, student_maps=a["student_maps"][:1], teacher_maps=a["teacher_maps"][:1]), "student_maps has 1 rows"),
        (lambda a: {k: x[:0] for k, x in a.items()}, "at least one row"),
        (lambda a: dict(a, student_logits=a["student_logits"].long()), "student_logits must be a floating-point"),
        (lambda a: dict(a, student_logits=a["student_logits"][0]), "student_logits must have a batch dimension"),
        (lambda a: dict(a, T=0.0), "temperature T"),
        (lambda a: dict(a, lam=float("nan")), "lam must be"),
    ],
)
def test_bad_inputs_name_the_argument(gen, change, message):
    s, t, u, v = random_inputs(gen, 2, 4, 6)
    args = dict(student_logits=s, teacher_logits=t, student_maps=u, teacher_maps=v)
    args = change(args)
    T, lam = args.pop("T", 1.0), args.pop("lam", 1.0)
    with pytest.raises((ValueError, TypeError), match=message):
        kd_explain_loss(args["student_logits"], args["teacher_logits"], args["student_maps"], args["teacher_maps"], T, lam)


@needs_ext
def test_the_kernel_checks_direct_calls(gen):
    s, t, u, v = random_inputs(gen, 2, 4, 6)
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.kdfast.kd_explain_loss(s, t.float(), u, v, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="teacher_maps must match"):
        torch.ops.kdfast.kd_explain_loss(s, t, u, v[:, :3], 1.0, 1.0)


TRITON_CHECK = textwrap.dedent(
    """
    import triton_gpu_scalars  # Python float arguments arrive as float32, as on a GPU
    import torch
    import kdfast.ops.kd_explain_loss as loss_module
    from test_kd_explain_loss import OpCalls, direct
    # The CUDA face on CPU tensors: the kernel registered for CUDA, registered for the CPU too, so the whole op
    # (validation, autograd, kernels) runs through the Triton kernels.
    torch.library.register_kernel("kdfast::kd_explain_loss", "cpu", loss_module._triton_kernel)
    validations = []
    check = loss_module.check_loss_inputs
    loss_module.check_loss_inputs = lambda *args: validations.append(1) or check(*args)
    gen = torch.Generator().manual_seed(0)
    T, lam, eps = 2.3, 0.7, 1.1e-8  # none is a float32 number: float64 must not see them rounded
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        for B, K, N in ((1, 1, 1), (3, 10, 49), (2, 2100, 2 * 2048 + 3)):
            s = torch.randn(B, K, generator=gen, dtype=dtype) * 3
            t = torch.randn(B, K, generator=gen, dtype=dtype) * 3
            u = torch.rand(B, N, generator=gen, dtype=dtype)
            v = torch.randn(B, N, generator=gen, dtype=dtype)
            if K > 1:
                s[0, : K // 2] = s[0, 0]  # ties
                t[-1] *= 1e4  # huge logits
            u[0] = 0 if N > 1 else u[0]  # a zero student map: the eps branch
            v[-1] = 0 if B > 2 else v[-1]  # a zero teacher map
            want_kd, want_ex, want_gs, want_gu = direct(s, t, u, v, T, lam, eps)
            a, b = s.clone().requires_grad_(True), u.clone().requires_grad_(True)
            del validations[:]
            with OpCalls() as calls:
                kd, ex = loss_module.kd_explain_loss_terms(a, t, b, v, T, lam, eps)
            (0.7 * kd + 1.3 * ex).backward()
            assert len(validations) == 1 and len(calls.outputs) == 1, (len(validations), len(calls.outputs))
            assert abs(kd.item() - want_kd) <= tol * max(1, want_kd), (dtype, B, K, N, kd.item(), want_kd)
            assert abs(ex.item() - want_ex) <= tol * max(1, want_ex), (dtype, B, K, N, ex.item(), want_ex)
            scale_s, scale_u = want_gs.abs().max().item(), want_gu.abs().max().item()
            assert (a.grad.double() - 0.7 * want_gs).abs().max() <= tol * scale_s, (dtype, B, K, N, "grad s")
            assert (b.grad.double() - 1.3 * want_gu).abs().max() <= tol * max(scale_u, 1e-30), (dtype, B, K, N, "grad u")
            a.grad = b.grad = None
            loss_module.kd_explain_loss_terms(a, t, b, v, T, lam, eps)[1].backward()  # explanation only
            assert torch.equal(a.grad, torch.zeros_like(a)), (dtype, B, K, N, "kd unused")
            assert (b.grad.double() - want_gu).abs().max() <= tol * max(scale_u, 1e-30), (dtype, B, K, N, "ex only")
            with torch.no_grad(), OpCalls() as calls:
                eval_kd, eval_ex = loss_module.kd_explain_loss_terms(a, t, b, v, T, lam, eps)
            assert calls.outputs[0][2].numel() == 0 and calls.outputs[0][3].numel() == 0  # eval: no gradients
            assert torch.equal(eval_kd, kd.detach()) and torch.equal(eval_ex, ex.detach())
    s = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    for args, message in (((s, s.float(), s, s), "one dtype"), ((s, s, s, s[:, :3]), "teacher_maps must match"),
                          ((s, s, s[:, :0], s[:, :0]), "needs B >= 1")):
        try:
            torch.ops.kdfast.kd_explain_loss(*args, 1.0, 1.0)
        except RuntimeError as error:
            assert message in str(error), (message, str(error))
        else:
            raise AssertionError(f"no error for {message}")
    print("triton ok")
    """
)


def test_triton_kernels_under_the_interpreter():
    """The CUDA path's Triton kernels, run on CPU tensors by Triton's interpreter (which must be switched on
    before triton is imported, hence the subprocess)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "triton ok" in done.stdout


@needs_ext
@requires_cuda
def test_cuda_matches_cpu(gen):
    s, t, u, v = random_inputs(gen, 16, 1000, 224 * 224, dtype=torch.float32)
    cpu = [x.clone().requires_grad_(True) for x in (s, u)]
    gpu = [x.cuda().requires_grad_(True) for x in (s, u)]
    want = kd_explain_loss(cpu[0], t, cpu[1], v, 4.0, 1.0)
    got = kd_explain_loss(gpu[0], t.cuda(), gpu[1], v.cuda(), 4.0, 1.0)
    want.backward()
    got.backward()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-4, atol=1e-9)
