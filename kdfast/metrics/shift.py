"""Shift equivariance of explanations (ECCV 2024 e2KD paper, Fig. 4 centre).

Explanations of the image shifted diagonally by s pixels are compared with the unshifted one by cosine similarity
over the area both cover. Shifting crops the image: the unshifted view is the crop [0, H−M) × [0, W−M) and the
view shifted by s is [s, s+H−M) × [s, s+W−M) (M = the largest shift), so every view holds real content and no
padding enters the comparison.
"""
import torch
import torch.nn.functional as F

from ._checks import check_class_indices, check_tensor


def shifted_view(images, shift, max_shift):
    """The crop of `images` (N, C, H, W) shifted diagonally by `shift`, of size (H − max_shift, W − max_shift)."""
    height, width = images.shape[-2] - max_shift, images.shape[-1] - max_shift
    return images[..., shift:shift + height, shift:shift + width]


def overlap_cosine(reference, shifted, shift):
    """(N,) cosine between maps (N, h, w) of the unshifted and the s-shifted views over their common area."""
    h, w = reference.shape[-2:]
    if shift >= min(h, w):
        raise ValueError(f"shift {shift} leaves no overlap between {h}×{w} explanations")
    a = reference[:, shift:, shift:].flatten(1).double()
    b = shifted[:, :h - shift, :w - shift].flatten(1).double()
    return F.cosine_similarity(a, b, dim=1, eps=1e-12)


def shift_equivariance(explain, images, targets, max_shift, shifts=None):
    """Mean cosine similarity per shift. `explain(images, targets) -> (N, h, w)` maps the size of its input.

    Returns {"shifts": [...], "cosine": [mean over images per shift], "per_image": (S, N) tensor}."""
    check_tensor("images", images, dims=4, floating=True)
    check_class_indices("targets", targets, size=images.shape[0])
    if not 0 < max_shift < min(images.shape[-2:]):
        raise ValueError(f"max_shift must be in 1..{min(images.shape[-2:]) - 1} for {tuple(images.shape[-2:])} "
                         f"images, got {max_shift}")
    shifts = list(range(max_shift + 1)) if shifts is None else list(shifts)
    if any(not 0 <= s <= max_shift for s in shifts):
        raise ValueError(f"shifts must lie in 0..{max_shift}, got {shifts}")
    reference = explain(shifted_view(images, 0, max_shift), targets)
    expected = (images.shape[0], images.shape[-2] - max_shift, images.shape[-1] - max_shift)
    if tuple(reference.shape) != expected:
        raise ValueError(f"explain returned maps of shape {tuple(reference.shape)}, expected {expected}")
    per_image = torch.stack([
        overlap_cosine(reference, explain(shifted_view(images, s, max_shift), targets), s) for s in shifts
    ])
    return {"shifts": shifts, "cosine": per_image.mean(dim=1).tolist(), "per_image": per_image}
