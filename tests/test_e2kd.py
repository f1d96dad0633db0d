"""The e2KD methods against the loss written out from its definition (SEEDS §3), float64."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import functional as TF

from kdfast import _extension
from kdfast.distill.e2kd import E2KDBcos, E2KDGradCAM
from test_explain import gradcam_one_image, tiny_resnet

pytestmark = pytest.mark.skipif(not _extension.available(), reason="kdfast._C is not built")


def e2kd_formula(s_logits, t_logits, s_maps, t_maps, tau, lam):
    """τ²·KL(p_T(τ) ‖ p_S(τ)) + λ·(1 − cos), each averaged over the batch, written with explicit sums."""
    p_t = torch.softmax(t_logits / tau, dim=1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s_logits / tau, dim=1))).sum(1)
    u, v = s_maps.flatten(1), t_maps.flatten(1)
    cos = (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))
    return tau**2 * kl.mean(), lam * (1 - cos).mean()


def resize(maps, size):
    """The reference code's resize: torchvision's (bilinear, antialiased)."""
    return TF.resize(maps[:, None], list(size), antialias=True)[:, 0]


def models(teacher_map_stride=2):
    student, teacher = tiny_resnet(seed=1), tiny_resnet(seed=2).eval()
    teacher.layer4[0].stride = (teacher_map_stride, teacher_map_stride)
    return student, teacher


def batch_of(gen, n=3, size=32):
    return {
        "images": torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64),
        "targets": torch.randint(0, 6, (n,), generator=gen),
        "indices": torch.arange(n),
    }


@pytest.mark.parametrize("map_size", ["image", "teacher", "student", (3, 5)])
def test_gradcam_terms_match_the_definition(gen, map_size):
    student, teacher = models(teacher_map_stride=1)  # teacher maps 4x4, student maps 2x2 at 32 px
    student.eval()  # the per-image maps below must see the batch step's normalisation
    batch = batch_of(gen)
    out = E2KDGradCAM(tau=2.0, lam=3.0, map_size=map_size)(student, teacher, batch)

    t_logits = teacher(batch["images"]).detach()
    s_logits = student(batch["images"])
    classes = t_logits.argmax(1)
    t_maps = torch.stack([gradcam_one_image(teacher, x, int(c), "layer4") for x, c in zip(batch["images"], classes)])
    s_maps = torch.stack([gradcam_one_image(student, x, int(c), "layer4") for x, c in zip(batch["images"], classes)])
    assert t_maps.shape[1:] == (4, 4) and s_maps.shape[1:] == (2, 2)
    size = {"image": (32, 32), "teacher": (4, 4), "student": (2, 2)}.get(map_size, map_size)
    kd, ex = e2kd_formula(s_logits, t_logits, resize(s_maps, size), resize(t_maps, size), 2.0, 3.0)
    assert set(out.terms) == {"kd", "explanation"}
    torch.testing.assert_close(out.terms["kd"], kd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.terms["explanation"], ex, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.student_logits, s_logits)
    torch.testing.assert_close(out.teacher_logits, t_logits)
    assert out.terms["explanation"].item() > 0


def test_closed_form_and_double_backward_give_the_same_step(gen):
    batch = batch_of(gen)
    grads = []
    for cam in ("closed_form", "autograd"):
        student, teacher = models()
        method = E2KDGradCAM(tau=4.0, lam=5.0, cam=cam)
        method(student, teacher, batch).loss.backward()
        grads.append({n: p.grad for n, p in student.named_parameters()})
        assert all(p.grad is None for p in teacher.parameters())
    assert grads[0]["layer4.0.weight"].abs().max() > 0
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=1e-9, atol=1e-13, msg=name)


def test_precomputed_teacher_outputs_replace_the_teacher(gen):
    student, teacher = models()
    method = E2KDGradCAM(tau=2.0, lam=1.0)
    batch = batch_of(gen)
    live = method(student, teacher, batch)
    t_logits, t_maps = method.explain_teacher(teacher, batch["images"])
    frozen = method(student, None, dict(batch, teacher_logits=t_logits, teacher_explanations=t_maps))
    for name in live.terms:
        torch.testing.assert_close(frozen.terms[name], live.terms[name], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="no 'teacher_logits'"):
        method(student, None, dict(batch, teacher_explanations=t_maps))
    with pytest.raises(ValueError, match="needs a teacher"):
        method(student, None, batch)


def test_ce_weight_adds_the_ground_truth_term(gen):
    student, teacher = models()
    batch = batch_of(gen)
    out = E2KDGradCAM(ce_weight=0.5)(student, teacher, batch)
    torch.testing.assert_close(out.terms["ce"], 0.5 * F.cross_entropy(out.student_logits, batch["targets"]))
    assert "ce" not in E2KDGradCAM()(student, teacher, batch).terms


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(tau=0), "tau must be"),
        (dict(lam=-1), "lam must be"),
        (dict(ce_weight="1"), "ce_weight must be"),
        (dict(cam="gradcam++"), "cam must be one of"),
        (dict(map_size="native"), "map_size must be one of"),
        (dict(map_size=(7, 0)), "map_size must be one of"),
    ],
)
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        E2KDGradCAM(**options)


def test_closed_form_head_is_checked(gen):
    student, teacher = models()
    student.avgpool = nn.AdaptiveMaxPool2d(1)
    with pytest.raises(ValueError, match="closed-form CAM would not equal GradCAM"):
        E2KDGradCAM()(student, teacher, batch_of(gen))
    E2KDGradCAM(cam="autograd")(student, teacher, batch_of(gen)).loss.backward()  # any head works there


# ---- B-cos ---------------------------------------------------------------------------------------------

try:
    from kdfast.models import bcos
except ImportError:  # the B-cos models are another module of the package; skip only these tests without it
    bcos = None
needs_bcos = pytest.mark.skipif(bcos is None, reason="kdfast.models.bcos is not available")


def bcos_models():
    torch.manual_seed(3)
    student = bcos.bcos_resnet18(num_classes=5, inplanes=4, small_inputs=True).double()
    teacher = bcos.bcos_resnet18(num_classes=5, inplanes=8, small_inputs=True).double().eval()
    return student, teacher


def bcos_weights_one_image(model, x6, cls):
    """W(x) of one image: the input gradient of its class logit with the dynamic scales held constant."""
    x = x6[None].clone().requires_grad_(True)
    with bcos.explanation_mode(model):
        logit = model(x)[0, cls]
    return torch.autograd.grad(logit, x)[0][0]


@needs_bcos
def test_bcos_terms_match_the_definition(gen):
    student, teacher = bcos_models()
    student.eval()  # per-image W below uses running statistics: so must the batched step
    images = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    batch = {"images": images, "targets": torch.tensor([0, 1]), "indices": torch.arange(2)}
    out = E2KDBcos(tau=2.0, lam=5.0)(student, teacher, batch)
    x6 = bcos.encode_input(images)
    t_logits, s_logits = teacher(x6).detach(), student(x6).detach()
    classes = t_logits.argmax(1)
    t_w = torch.stack([bcos_weights_one_image(teacher, x6[i], int(classes[i])) for i in range(2)])
    s_w = torch.stack([bcos_weights_one_image(student, x6[i], int(classes[i])) for i in range(2)])
    assert t_w.shape == (2, 6, 16, 16)
    kd, ex = e2kd_formula(s_logits, t_logits, s_w, t_w, 2.0, 5.0)
    torch.testing.assert_close(out.terms["kd"], kd, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.terms["explanation"], ex, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.student_logits.detach(), s_logits)


@needs_bcos
def test_bcos_student_is_trained_through_its_explanation(gen):
    student, teacher = bcos_models()
    images = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    batch = {"images": images, "targets": torch.tensor([0, 1]), "indices": torch.arange(2)}
    E2KDBcos(tau=1.0, lam=1.0)(student, teacher, batch).terms["explanation"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().max() > 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


@needs_bcos
def test_bcos_frozen_explanations_are_resized(gen):
    student, teacher = bcos_models()
    method = E2KDBcos()
    images = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    t_logits, t_w = method.explain_teacher(teacher, images)
    batch = {"images": images, "targets": torch.tensor([0, 1]), "indices": torch.arange(2)}
    live = method(student, teacher, batch)
    same = method(student, None, dict(batch, teacher_logits=t_logits, teacher_explanations=t_w))
    torch.testing.assert_close(same.terms["explanation"], live.terms["explanation"], rtol=1e-12, atol=1e-14)
    coarse = F.interpolate(t_w, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    out = method(student, None, dict(batch, teacher_logits=t_logits, teacher_explanations=coarse))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="needs \\(B, 3, H, W\\) images"):
        method(student, teacher, dict(batch, images=images[:, :2]))
