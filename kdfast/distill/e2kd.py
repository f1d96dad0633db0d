"""Explanation-enhanced KD (e2KD, Parchami-Araghi et al., ECCV 2024):

    L = τ²·KL(p_T(τ) ‖ p_S(τ)) + λ·(1 − cos(E(T, x, ŷ_T), E(S, x, ŷ_T)))   (+ ce_weight·CE(z_S, y), off by default)

batch mean, ŷ_T the teacher's top-1 class, evaluated by the fused op torch.ops.kdfast.kd_explain_loss. Two
explanation kinds: GradCAM for standard CNNs (E2KDGradCAM) and the dynamic linear weights W(x) of B-cos
networks (E2KDBcos). Both take the teacher's logits and explanations from the batch when a frozen-explanation
store provides them ("teacher_logits", "teacher_explanations"); then the teacher does not run.
"""
import torch

from kdfast.distill.losses import supervised_loss
from kdfast.distill.method import DistillationMethod, StepOutput
from kdfast.explain.gradcam import check_classes, gradcam, pool_linear_cam, resize_maps
from kdfast.ops.kd_explain_loss import DEFAULT_EPS, kd_explain_loss_terms

_CAM_KINDS = ("closed_form", "autograd")
_MAP_SIZES = ("image", "teacher", "student")


def _check_number(name, value, minimum, inclusive):
    if not isinstance(value, (int, float)) or not (value >= minimum if inclusive else value > minimum):
        raise ValueError(f"{name} must be a number {'>=' if inclusive else '>'} {minimum}, got {value!r}")
    return float(value)


class _E2KD(DistillationMethod):
    """The loss assembly both explanation kinds share; subclasses say how explanations are made."""

    def __init__(self, tau, lam, ce_weight, eps):
        super().__init__()
        self.tau = _check_number("tau", tau, 0.0, inclusive=False)
        self.lam = _check_number("lam", lam, 0.0, inclusive=True)
        self.ce_weight = _check_number("ce_weight", ce_weight, 0.0, inclusive=True)
        self.eps = _check_number("eps", eps, 0.0, inclusive=False)

    def explain_teacher(self, teacher, images):
        """(logits (B, K), explanations for each sample's top-1 class), constants: what a frozen-explanation
        store saves (kdfast.explain.precompute_explanations(teacher, data, root, method.explain_teacher))."""
        raise NotImplementedError

    def _teacher_outputs(self, teacher, batch):
        if "teacher_explanations" in batch:
            if "teacher_logits" not in batch:
                raise ValueError("batch has 'teacher_explanations' but no 'teacher_logits'; a frozen store provides both")
            device = batch["images"].device
            return batch["teacher_logits"].to(device), batch["teacher_explanations"].to(device)
        if teacher is None:
            raise ValueError(f"{self.name} needs a teacher, or precomputed 'teacher_logits' and 'teacher_explanations' in the batch")
        return self.explain_teacher(teacher, batch["images"])

    def _loss(self, batch, student_logits, teacher_logits, student_maps, teacher_maps):
        kd, explanation = kd_explain_loss_terms(
            student_logits, teacher_logits, student_maps, teacher_maps,
            T=self.tau, lam=self.lam, eps=self.eps,
        )
        terms = {"kd": kd, "explanation": explanation}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * supervised_loss(student_logits, batch["targets"])
        return StepOutput(terms=terms, student_logits=student_logits, teacher_logits=teacher_logits.detach())


class E2KDGradCAM(_E2KD):
    """e2KD with GradCAM explanations at `layer` (student) / `teacher_layer` (teacher).

    cam="closed_form" (default) uses relu(Σ_k W[c, k]·A_k)/(h·w) for models whose layer feeds a global
    average pool and the linear `head` (torchvision ResNets: layer4 + fc; checked on the first batch): one
    forward, no double backward, the same values and gradients as the autograd GradCAM. cam="autograd"
    computes GradCAM with autograd and trains through it with a double backward (the reference code's way;
    any layer and head). Maps are resized bilinearly to a common size before the cosine: map_size="image"
    (the input's height and width, as the reference code does), "teacher", "student", or (h, w)."""

    name = "e2kd_gradcam"

    def __init__(self, tau=1.0, lam=1.0, ce_weight=0.0, layer="layer4", head="fc", teacher_layer=None,
                 teacher_head=None, cam="closed_form", map_size="image", eps=DEFAULT_EPS):
        super().__init__(tau, lam, ce_weight, eps)
        if cam not in _CAM_KINDS:
            raise ValueError(f"cam must be one of {_CAM_KINDS}, got {cam!r}")
        if isinstance(map_size, str):
            if map_size not in _MAP_SIZES:
                raise ValueError(f"map_size must be one of {_MAP_SIZES} or (height, width), got {map_size!r}")
        elif not (len(map_size) == 2 and all(isinstance(s, int) and s >= 1 for s in map_size)):
            raise ValueError(f"map_size must be one of {_MAP_SIZES} or (height, width) of positive ints, got {map_size!r}")
        self.layer, self.head = layer, head
        self.teacher_layer = layer if teacher_layer is None else teacher_layer
        self.teacher_head = head if teacher_head is None else teacher_head
        self.cam, self.map_size = cam, map_size
        self._heads_checked = {"student": False, "teacher": False}

    def _cam(self, role, model, images, classes, create_graph):
        layer = self.layer if role == "student" else self.teacher_layer
        if self.cam == "autograd":
            return gradcam(model, images, classes, layer=layer, create_graph=create_graph)
        head = self.head if role == "student" else self.teacher_head
        check = not self._heads_checked[role]
        logits, cams = pool_linear_cam(model, images, classes, layer=layer, head=head, check_head=check)
        self._heads_checked[role] = True
        return logits, cams

    def explain_teacher(self, teacher, images):
        with torch.no_grad() if self.cam == "closed_form" else torch.enable_grad():
            logits, cams = self._cam("teacher", teacher, images, None, create_graph=False)
        return logits.detach(), cams.detach()

    def _common_size(self, images, student_maps, teacher_maps):
        if self.map_size == "image":
            return tuple(images.shape[-2:])
        if self.map_size == "teacher":
            return tuple(teacher_maps.shape[-2:])
        if self.map_size == "student":
            return tuple(student_maps.shape[-2:])
        return tuple(self.map_size)

    def forward(self, student, teacher, batch):
        images = batch["images"]
        teacher_logits, teacher_maps = self._teacher_outputs(teacher, batch)
        if teacher_maps.dim() != 3:
            raise ValueError(f"teacher GradCAM maps must be (B, h, w), got shape {tuple(teacher_maps.shape)}")
        classes = check_classes(teacher_logits.argmax(dim=1), teacher_logits)
        student_logits, student_maps = self._cam("student", student, images, classes, create_graph=True)
        size = self._common_size(images, student_maps, teacher_maps)
        return self._loss(batch, student_logits, teacher_logits, resize_maps(student_maps, size),
                          resize_maps(teacher_maps.to(student_maps.dtype), size))


def _bcos():
    from kdfast.models import bcos

    return bcos


class E2KDBcos(_E2KD):
    """e2KD with B-cos explanations: the dynamic linear weights W(x) (all 6 input channels) of teacher and
    student for the teacher's top-1 class. Images are (B, 3, H, W) in [0, 1] (no mean/std normalisation;
    they are encoded to [r, g, b, 1−r, 1−g, 1−b] here) or already encoded (B, 6, H, W). As in the reference
    code, the whole student step runs in explanation mode (dynamic scales detached), and W_S is trained
    through with a double backward. Stored teacher W of another resolution is resized to the student's."""

    name = "e2kd_bcos"

    def __init__(self, tau=1.0, lam=1.0, ce_weight=0.0, eps=DEFAULT_EPS):
        super().__init__(tau, lam, ce_weight, eps)

    @staticmethod
    def encode(images):
        if images.dim() != 4 or images.shape[1] not in (3, 6):
            raise ValueError(f"B-cos e2KD needs (B, 3, H, W) images in [0, 1] or (B, 6, H, W) encoded ones, got {tuple(images.shape)}")
        return _bcos().encode_input(images) if images.shape[1] == 3 else images

    def explain_teacher(self, teacher, images):
        explanation = _bcos().explain_batch(teacher, self.encode(images))
        return explanation.logits.detach(), explanation.weights.detach()

    def forward(self, student, teacher, batch):
        x6 = self.encode(batch["images"])
        teacher_logits, teacher_weights = self._teacher_outputs(teacher, batch)
        if teacher_weights.dim() != 4:
            raise ValueError(f"teacher B-cos explanations must be (B, C, H, W), got shape {tuple(teacher_weights.shape)}")
        classes = check_classes(teacher_logits.argmax(dim=1), teacher_logits)
        # W(x) = ∂logit_c/∂x with its graph (trained through by a double backward, as in the reference code),
        # and the logits of the same pass with theirs for the KD term.
        student_logits, student_weights, _ = _bcos().explain_batch(student, x6, classes, create_graph=True)
        if teacher_weights.shape[1] != student_weights.shape[1]:
            raise ValueError(
                f"teacher explanations have {teacher_weights.shape[1]} channels, the student's W(x) has {student_weights.shape[1]}"
            )
        teacher_weights = resize_maps(teacher_weights.to(student_weights.dtype), student_weights.shape[-2:])
        return self._loss(batch, student_logits, teacher_logits, student_weights, teacher_weights)
