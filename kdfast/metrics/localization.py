"""Localisation of explanations against bounding boxes: energy pointing game (EPG) and IoU (Rao et al. 2023, as
the ECCV 2024 e2KD paper uses them). Only the positive part a⁺ = max(a, 0) of an attribution map counts."""
import torch

from ._checks import check_finite, check_nonempty, check_same_shape, check_tensor

EPG_MIN_ENERGY = 1e-7


def boxes_to_mask(boxes, height, width):
    """(N, H, W) bool masks from per-image lists of (x0, y0, x1, y1) pixel boxes (x1, y1 exclusive)."""
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for i, image_boxes in enumerate(boxes):
        for box in image_boxes:
            if len(box) != 4:
                raise ValueError(f"image {i}: box {box} must be (x0, y0, x1, y1)")
            x0, y0, x1, y1 = (int(v) for v in box)
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ValueError(f"image {i}: box {tuple(box)} is empty or outside the {width}×{height} image "
                                 "(expected 0 ≤ x0 < x1 ≤ width, 0 ≤ y0 < y1 ≤ height)")
            masks[i, y0:y1, x0:x1] = True
    return masks


def _check(attributions, box_masks):
    check_tensor("attributions", attributions, dims=3, floating=True)
    check_tensor("box_masks", box_masks, dims=3)
    if box_masks.dtype != torch.bool:
        raise ValueError(f"box_masks must be bool, got {box_masks.dtype}")
    check_same_shape("attributions", attributions, "box_masks", box_masks)
    check_nonempty("attributions", attributions)
    check_finite("attributions", attributions)
    empty = ~box_masks.flatten(1).any(dim=1)
    if bool(empty.any()):
        raise ValueError(f"box mask of image {int(empty.nonzero()[0])} is empty; leave images without boxes out")


def energy_pointing_game(attributions, box_masks):
    """(N,) Σ a⁺ inside the boxes / Σ a⁺, per image; 0 where Σ a⁺ < 1e−7 (no positive evidence at all)."""
    _check(attributions, box_masks)
    positive = attributions.double().clamp(min=0).flatten(1)
    total = positive.sum(dim=1)
    inside = (positive * box_masks.flatten(1)).sum(dim=1)
    return torch.where(total >= EPG_MIN_ENERGY, inside / torch.where(total > 0, total, 1.0), 0.0)


def box_iou(attributions, box_masks, threshold=0.5):
    """(N,) IoU between {a⁺ min-max normalised per image > threshold} and the box mask.

    A constant map normalises to all zeros (nothing selected, IoU 0). This differs from Rao et al.'s code, whose
    ε-stabilised normalisation selects the whole image for a constant positive map (IoU = the box's share of the
    image) and treats near-constant maps likewise (docs/evaluate.md, Deviations)."""
    _check(attributions, box_masks)
    positive = attributions.double().clamp(min=0).flatten(1)
    low = positive.min(dim=1, keepdim=True).values
    span = positive.max(dim=1, keepdim=True).values - low
    normalised = torch.where(span > 0, (positive - low) / torch.where(span > 0, span, 1.0), 0.0)
    selected = normalised > threshold
    boxes = box_masks.flatten(1)
    inter = (selected & boxes).sum(dim=1).double()
    union = (selected | boxes).sum(dim=1).double()
    return inter / union
