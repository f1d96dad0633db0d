"""Fused dissection tally: upsample each unit's map to the segmentation size (bilinear, half-pixel
centres, edge clamped), threshold it at T_u and count, in integers,

* label_counts[l]   pixels of label l (plane pixels; an image-level label counts S_h·S_w per image),
* intersections[u, l]  active pixels of unit u that carry label l (image-level labels: every active pixel),
* activations[u, c]  active pixels of unit u, added for category c only where the active region touches
  a label of category c in that image (NetDissect-Lite), or wherever category c occurs in the image
  (`category_gated=False`, the original NetDissect).

The B·U·S·S upsampled tensor is never materialised by the kernels.
"""
from collections import namedtuple

import torch

from kdfast import _extension
from kdfast.ops._checks import as_float32, as_int, check_dims

TallyCounts = namedtuple("TallyCounts", ["label_counts", "intersections", "activations"])


def _check(acts, thresholds, seg, image_labels, label_category, check_finite):
    acts = as_float32(acts, "acts", finite=check_finite)
    check_dims(acts, "acts", (4,), "(B, U, h, w)")
    thresholds = as_float32(thresholds, "thresholds", finite=check_finite)
    check_dims(thresholds, "thresholds", (1,), "(U,)")
    seg = as_int(seg, "seg", torch.int32)
    check_dims(seg, "seg", (4,), "(B, P, S_h, S_w) label planes")
    image_labels = as_int(image_labels, "image_labels", torch.int32)
    check_dims(image_labels, "image_labels", (2,), "(B, Q) image-level labels, 0-padded")
    label_category = as_int(label_category, "label_category", torch.int64)
    check_dims(label_category, "label_category", (1,), "(L,) category index per label number, -1 for none")
    return acts, thresholds, seg, image_labels, label_category


def iou_tally(acts, thresholds, seg, image_labels, label_category, num_categories, category_gated=True,
              labels_validated=False, check_finite=True):
    """Counts for one batch; add them up over the dataset. Returns TallyCounts of int64 tensors.

    Every check that reads data on the host (a sync per call on a GPU) can be vouched for by a caller that
    did it once: `labels_validated=True` promises that seg and image_labels hold label numbers in [0, L) and
    label_category entries in [-1, num_categories) (a packed Broden cache checks its labels when it is packed,
    `PackedBroden.labels_validated`); `check_finite=False` leaves NaN/Inf in acts and thresholds to the caller
    (the dissection records them in device flags). The counts are the same either way; a NaN pixel never
    counts as active, on every backend."""
    args = _check(acts, thresholds, seg, image_labels, label_category, check_finite)
    _extension.load()
    return TallyCounts(
        *torch.ops.kdfast.iou_tally(*args, int(num_categories), bool(category_gated), bool(labels_validated))
    )


def bilinear_source_index(out, inp, device="cpu"):
    """(i0, i1, t) per output position of a half-pixel bilinear resize of an axis from inp to out values: the
    output is a + t·(b − a) with a, b the inputs at i0, i1 (float64 t), as in the kernels."""
    scale = inp / out
    src = (scale * (torch.arange(out, dtype=torch.float64) + 0.5) - 0.5).clamp(min=0)
    i0 = src.long().clamp(max=inp - 1)
    i1 = torch.where(i0 < inp - 1, i0 + 1, i0)
    return i0.to(device), i1.to(device), (src - i0).to(device)


def upsample_reference(acts, size):
    """Half-pixel bilinear upsampling written out in plain PyTorch, in the kernels' exact arithmetic
    (a + t·(b − a) in float64): equal to F.interpolate(mode='bilinear', align_corners=False) up to rounding."""
    acts = acts.double()
    h, w = acts.shape[-2:]
    y0, y1, ty = bilinear_source_index(size[0], h, acts.device)
    x0, x1, tx = bilinear_source_index(size[1], w, acts.device)

    def lerp(a, b, t):
        return a + t * (b - a)

    rows0, rows1 = acts[..., y0, :], acts[..., y1, :]
    top = lerp(rows0[..., x0], rows0[..., x1], tx)
    bottom = lerp(rows1[..., x0], rows1[..., x1], tx)
    return lerp(top, bottom, ty[:, None])


def iou_tally_reference(acts, thresholds, seg, image_labels, label_category, num_categories, category_gated=True):
    """Plain-PyTorch oracle (materialises the upsampled masks and one-hot label planes; small inputs only)."""
    B, U = acts.shape[:2]
    S = seg.shape[-2:]
    L = label_category.shape[0]
    C = int(num_categories)
    seg = seg.long()
    image_labels = image_labels.long()
    label_category = label_category.long()
    mask = upsample_reference(acts, S) > thresholds.double()[None, :, None, None]  # (B, U, S_h, S_w)
    active = mask.sum(dim=(2, 3))  # (B, U)

    onehot = torch.nn.functional.one_hot(seg, L).to(torch.int64)  # (B, P, S_h, S_w, L)
    onehot[..., 0] = 0
    per_image = torch.einsum("buhw,bphwl->bul", mask.long(), onehot)  # (B, U, L)
    image_onehot = torch.nn.functional.one_hot(image_labels, L).sum(1)  # (B, L)
    image_onehot[:, 0] = 0
    per_image = per_image + active[:, :, None] * image_onehot[:, None, :]

    label_counts = onehot.sum(dim=(0, 1, 2, 3)) + image_onehot.sum(0) * S[0] * S[1]
    label_onehot_cat = torch.zeros(L, C + 1, dtype=torch.int64)
    label_onehot_cat[torch.arange(L), label_category + 1] = 1  # column 0 = no category
    label_onehot_cat = label_onehot_cat[:, 1:].to(acts.device)
    if category_gated:
        gate = (per_image @ label_onehot_cat) > 0  # (B, U, C): touched a label of category c
    else:
        in_image = onehot.sum(dim=(1, 2, 3)) + image_onehot  # (B, L)
        gate = ((in_image @ label_onehot_cat) > 0)[:, None, :].expand(B, U, C)
    activations = (active[:, :, None] * gate).sum(0)
    return TallyCounts(label_counts, per_image.sum(0), activations)


if _extension.available():

    @torch.library.register_fake("kdfast::iou_tally")
    def _iou_tally_fake(acts, thresholds, seg, image_labels, label_category, num_categories, category_gated,
                        labels_validated=False):
        L = label_category.shape[0]
        U = acts.shape[1]
        return (
            label_category.new_empty(L),
            label_category.new_empty(U, L),
            label_category.new_empty(U, num_categories),
        )
