"""Mixup for function matching (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and
consistent"; the e2KD paper's Waterbirds runs use it with α = 1): each training batch is replaced by
λ·x + (1 − λ)·x[perm], λ ~ Beta(α, α) drawn once per batch, and the wrapped method runs on the mixed batch —
so teacher and student see the SAME mixed image (consistent teaching), and explanation methods explain it.

Only objectives that do not use the labels can be wrapped (KD with alpha 1, e2KD with ce_weight 0,
multi-label KD; for multi-label {0, 1} targets the targets are mixed too and any base works): a mixed image
has no single class, and the wrapped methods' cross-entropy would silently train on the first image's label.
The trainer's train_acc is then measured against the first image's label of each mixed pair.
"""
import torch

from kdfast.distill.method import DistillationMethod


def uses_labels(method):
    """Whether a single-label method's loss reads the ground-truth class (so it cannot train on mixed or
    unlabelled images): a reason string, or None when it does not."""
    from kdfast.distill.e2kd import _E2KD
    from kdfast.distill.methods import KD, MultiLabelKD

    if isinstance(method, MultiLabelKD):
        return None
    if isinstance(method, KD):
        return None if method.alpha == 1.0 else f"kd with alpha {method.alpha} has a cross-entropy term (use alpha 1)"
    if isinstance(method, _E2KD):
        return None if method.ce_weight == 0 else f"{method.name} with ce_weight {method.ce_weight} (use 0)"
    if isinstance(method, Mixup):
        return uses_labels(method.base)
    return f"method '{method.name}' trains on the labels"


def mix_images(images, alpha):
    """(mixed images, λ, permutation): λ·x + (1 − λ)·x[perm], λ ~ Beta(α, α) (one per batch), both drawn from
    torch's default generator (which the trainer seeds)."""
    concentration = torch.tensor(float(alpha), dtype=torch.float64)
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    perm = torch.randperm(len(images)).to(images.device)
    return lam * images + (1 - lam) * images[perm], lam, perm


class Mixup(DistillationMethod):
    """`base` (a label-free method, see uses_labels) trained on mixup batches: build_method("mixup", alpha=1.0,
    base="kd", base_options={"alpha": 1.0, "temperature": 1.0})."""

    name = "mixup"

    def __init__(self, *, alpha=1.0, base="kd", base_options=None):
        super().__init__()
        from kdfast.distill import build_method

        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
            raise ValueError(f"alpha must be a number > 0 (the Beta(alpha, alpha) parameter), got {alpha!r}")
        self.alpha = float(alpha)
        self.base = build_method(base, **(base_options or {}))
        self.needs_teacher = self.base.needs_teacher

    def prepare(self, student, teacher, loader, device):
        self.base.prepare(student, teacher, loader, device)

    def forward(self, student, teacher, batch):
        targets = batch["targets"]
        if targets.dim() == 1:
            reason = uses_labels(self.base)
            if reason is not None:
                raise ValueError(f"mixup on single-label data needs a label-free base method: {reason}")
        if "teacher_logits" in batch or "teacher_explanations" in batch:
            raise ValueError("mixup cannot use frozen teacher outputs (they belong to the unmixed images); "
                             "set frozen_explanations: false")
        images, lam, perm = mix_images(batch["images"], self.alpha)
        mixed = dict(batch, images=images)
        if targets.dim() == 2:
            mixed["targets"] = lam * targets + (1 - lam) * targets[perm]
        mixed.pop("boxes", None)  # boxes of the first image do not describe a mixed one
        return self.base(student, teacher, mixed)
