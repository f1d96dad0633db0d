"""Model guidance with bounding boxes (Rao, Böhle, Parchami-Araghi & Schiele, ICCV 2023, "Studying how to
efficiently and effectively guide models with explanations"): the teachers of the e2KD paper's Waterbirds and
VOC settings are trained with one of these localisation losses on their explanations.

For each image, one class c is guided: the label for single-label data, a ground-truth class drawn uniformly
among the image's positive classes for multi-label data (their `get_random_optimization_targets`). M is the
union of that class's boxes (pixels of the network input, half-open [x0, x1) × [y0, y1)). With A the
explanation map of class c after the loss's post-processing (below):

    energy (EPG loss):  1 − Σ_{M} A⁺ / Σ A⁺          (A⁺ = max(A, 0); 1 − Σ_M A⁺ when Σ A⁺ < ε = 1e-7)
    l1 (their "L1"):    mean over all pixels of |Â − M|   (Â: only positive, divided by max |A|)
    rrr:                Σ_{outside M} Â²               (Â: A divided by max |A|)
    ppce (per-pixel CE): mean over M of −log Â         (BCE against 1; Â: only positive, divided by max |A|)

Post-processing as their attributors apply it: `only_positive` (clamp at 0), then `binarize` (divide by the
image's max |A| unless that is 0), then bilinear interpolation to the image size (GradCAM maps; B-cos maps are
already at the input resolution). The batch loss is the SUM over guided images (their training loop), times
`weight` (their `localization_loss_lambda`, default 1.0).

Explanations: "bcos" — the B-cos contribution map Σ_ch W(x)⊙x at the input (their "BCos" attributor at the
"Input" layer; the student must be a B-cos network); "gradcam" — GradCAM at `layer` (closed form for a
global-average-pool + linear `head`, equal to their "GradCam" attributor there), then interpolated.

Boxes (documented behaviour, also for the tests):
* Coordinates are clipped to the image: a box reaching over the border covers the pixels inside the image
  (their code slices tensors, so a negative coordinate would wrap around; we clip instead).
* A box with x0 ≥ x1 or y0 ≥ y1 after clipping is empty and covers nothing.
* An image whose guided class has no non-empty box (images without boxes, padding rows, empty boxes) is not
  guided: it contributes 0, like their loop's `if train_bbs[img_idx] is None: continue`. (Their losses would
  give 1 (energy, no gradient), push the whole map to 0 (l1, rrr) or NaN (ppce) for an empty mask.)
"""
import torch
import torch.nn.functional as F

from kdfast.distill.method import DistillationMethod
from kdfast.explain.gradcam import pool_linear_cam, resize_maps

ENERGY_EPS = 1e-7  # their EnergyPointingGameBBMultipleLoss: below this total energy the ratio is not taken


# ---------------------------------------------------------------------------------------------------------
# Boxes


def check_boxes(boxes, batch_size=None, name="boxes"):
    """(B, M, 5) int64 rows [class, x0, y0, x1, y1]; rows with class −1 are padding."""
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 3 or boxes.shape[-1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be a (B, M, 5) tensor of [class, x0, y0, x1, y1] rows, got {shape}")
    if boxes.dtype.is_floating_point or boxes.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer pixel coordinates, got {boxes.dtype}")
    if batch_size is not None and boxes.shape[0] != batch_size:
        raise ValueError(f"{name} has {boxes.shape[0]} images, expected {batch_size}")
    if boxes.numel() and int(boxes[..., 0].min()) < -1:
        raise ValueError(f"{name}: class entries must be >= 0 (or -1 for padding rows), got {int(boxes[..., 0].min())}")
    return boxes


def box_masks(boxes, classes, size):
    """(B, H, W) float masks of the union of each image's boxes of class `classes[b]`, clipped to the image."""
    check_boxes(boxes, len(classes))
    height, width = size
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    cls, x0, y0, x1, y1 = boxes.unbind(-1)
    selected = (cls == classes[:, None].to(boxes.device)) & (cls >= 0)  # (B, M)
    inside_y = (rows[None, None, :] >= y0[..., None]) & (rows[None, None, :] < y1[..., None])  # (B, M, H)
    inside_x = (cols[None, None, :] >= x0[..., None]) & (cols[None, None, :] < x1[..., None])  # (B, M, W)
    covered = inside_y[..., :, None] & inside_x[..., None, :] & selected[..., None, None]  # (B, M, H, W)
    return covered.any(dim=1).to(torch.get_default_dtype())


# ---------------------------------------------------------------------------------------------------------
# Losses on (B, H, W) maps and (B, H, W) {0, 1} masks → (B,) per-image values


def _postprocess(maps, only_positive, binarize):
    if only_positive:
        maps = maps.clamp(min=0)
    if binarize:
        peak = maps.abs().amax(dim=(1, 2), keepdim=True)
        maps = torch.where(peak == 0, maps, maps / torch.where(peak == 0, torch.ones_like(peak), peak))
    return maps


def energy_loss(maps, masks):
    positive = maps.clamp(min=0)
    inside = (positive * masks).sum(dim=(1, 2))
    total = positive.sum(dim=(1, 2))
    safe_total = torch.where(total < ENERGY_EPS, torch.ones_like(total), total)
    return torch.where(total < ENERGY_EPS, 1 - inside, 1 - inside / safe_total)


def l1_loss(maps, masks):
    return (maps - masks).abs().mean(dim=(1, 2))


def rrr_loss(maps, masks):
    return (maps * (1 - masks)).square().sum(dim=(1, 2))


def ppce_loss(maps, masks):
    # torch's BCE (log clamped at −100, as BCELoss) against 1, averaged over the mask's pixels.
    bce = F.binary_cross_entropy(maps, torch.ones_like(maps), weight=masks, reduction="none").sum(dim=(1, 2))
    return bce / masks.sum(dim=(1, 2)).clamp(min=1)


# name → (per-image loss, only_positive, binarize): their loss classes' attributor flags.
GUIDANCE_LOSSES = {
    "energy": (energy_loss, False, False),
    "l1": (l1_loss, True, True),
    "rrr": (rrr_loss, False, True),
    "ppce": (ppce_loss, True, True),
}


def guidance_loss(name, maps, boxes, classes, image_size=None, reduction="sum"):
    """The localisation loss `name` of explanation maps (B, h, w) of classes (B,) against boxes (B, M, 5):
    post-processing, interpolation to `image_size` (default: the maps' size), per-image loss, and the sum (or
    mean) over images that have a non-empty box of their class. Returns (loss, number of guided images)."""
    if name not in GUIDANCE_LOSSES:
        raise ValueError(f"unknown guidance loss {name!r}; known: {', '.join(GUIDANCE_LOSSES)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if maps.dim() != 3:
        raise ValueError(f"explanation maps must be (B, h, w), got shape {tuple(maps.shape)}")
    fn, only_positive, binarize = GUIDANCE_LOSSES[name]
    maps = _postprocess(maps, only_positive, binarize)
    if image_size is not None:
        maps = resize_maps(maps, image_size)
    masks = box_masks(boxes, classes, maps.shape[-2:]).to(maps.dtype)
    guided = masks.flatten(1).any(dim=1)
    per_image = torch.where(guided, fn(maps, masks), torch.zeros((), dtype=maps.dtype, device=maps.device))
    count = int(guided.sum())
    loss = per_image.sum()
    if reduction == "mean":
        loss = loss / max(count, 1)
    return loss, count


# ---------------------------------------------------------------------------------------------------------
# Explanations and the guided-training method


def guided_classes(targets, generator=None):
    """The class each image is guided for: the label of (B,) targets, or for (B, C) multi-label targets one
    positive class drawn uniformly (their `get_random_optimization_targets`). An image without positive
    classes gets any class; it has no boxes of a positive class, so it is not guided."""
    if targets.dim() == 1:
        return targets
    positives = (targets > 0).to(torch.float64)
    empty = positives.sum(dim=1) == 0
    positives[empty] = 1.0  # any class; such images carry no boxes of a positive class
    return torch.multinomial(positives, 1, generator=generator).squeeze(1)


def explanation_maps(kind, model, images, classes, layer="layer4", head="fc"):
    """(logits (B, K), maps (B, h, w)) of `classes`, differentiable w.r.t. the model's parameters."""
    if kind == "gradcam":
        return pool_linear_cam(model, images, classes, layer=layer, head=head)
    if kind == "bcos":
        from kdfast.models import bcos

        x6 = bcos.encode_input(images) if images.shape[1] == 3 else images
        explanation = bcos.explain_batch(model, x6, classes, create_graph=True)
        return explanation.logits, explanation.contributions
    raise ValueError(f"explanation must be 'gradcam' or 'bcos', got {kind!r}")


class Guided(DistillationMethod):
    """A base method (default `scratch`: cross-entropy, i.e. training a guided teacher) plus
    `weight` × a Rao et al. localisation loss on the student's explanations of the guided class:

        build_method("guided", loss="energy", explanation="bcos", weight=1.0)                       # a teacher
        build_method("guided", loss="energy", base="e2kd_gradcam", base_options={"lam": 5})        # + any method

    The batch must carry "boxes" (data.type waterbirds or voc). The explanation takes one extra forward of the
    student (GradCAM: closed form, no double backward; B-cos: a double backward through W(x)).
    classes="label" guides the guided class's explanation (Rao et al.); "all" guides every class's
    explanation to the guided class's boxes (one extra forward per class)."""

    name = "guided"

    def __init__(self, *, loss="energy", explanation="gradcam", weight=1.0, reduction="sum", base="scratch",
                 base_options=None, layer="layer4", head="fc", classes="label"):
        super().__init__()
        from kdfast.distill import build_method

        if loss not in GUIDANCE_LOSSES:
            raise ValueError(f"unknown guidance loss {loss!r}; known: {', '.join(GUIDANCE_LOSSES)}")
        if explanation not in ("gradcam", "bcos"):
            raise ValueError(f"explanation must be 'gradcam' or 'bcos', got {explanation!r}")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ValueError(f"weight must be a number >= 0, got {weight!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if classes not in ("label", "all"):
            raise ValueError(f"classes must be 'label' or 'all', got {classes!r}")
        if base == "guided":
            raise ValueError("base: 'guided' cannot wrap itself")
        self.loss, self.explanation, self.weight, self.reduction = loss, explanation, float(weight), reduction
        self.layer, self.head, self.classes = layer, head, classes
        self.base = build_method(base, **(base_options or {}))
        self.needs_teacher = self.base.needs_teacher

    def prepare(self, student, teacher, loader, device):
        self.base.prepare(student, teacher, loader, device)

    def forward(self, student, teacher, batch):
        if "boxes" not in batch:
            raise KeyError("method 'guided' needs 'boxes' in the batch (data.type waterbirds or voc provide them); "
                           f"the batch has: {', '.join(sorted(batch))}")
        out = self.base(student, teacher, batch)
        images, boxes = batch["images"], batch["boxes"].to(batch["images"].device)
        classes = guided_classes(batch["targets"]).to(images.device)
        if self.classes == "label":
            _, maps = explanation_maps(self.explanation, student, images, classes, self.layer, self.head)
            loss, _ = guidance_loss(self.loss, maps, boxes, classes, image_size=images.shape[-2:],
                                    reduction=self.reduction)
        else:
            # Every class's explanation must lie in the guided class's boxes: no class may draw positive
            # evidence from outside the object (a label-only guidance leaves the background free to act as
            # positive evidence for the other classes, i.e. negative evidence for the label).
            boxes = boxes.clone()
            loss = 0.0
            for k in range(out.student_logits.shape[1]):
                others = torch.full_like(classes, k)
                _, maps = explanation_maps(self.explanation, student, images, others, self.layer, self.head)
                relabelled = torch.where(boxes[..., :1] == classes[:, None, None], k, -1)
                relabelled = torch.cat([relabelled, boxes[..., 1:]], dim=-1)
                loss = loss + guidance_loss(self.loss, maps, relabelled, others, image_size=images.shape[-2:],
                                            reduction=self.reduction)[0]
        out.terms["guidance"] = self.weight * loss
        return out
