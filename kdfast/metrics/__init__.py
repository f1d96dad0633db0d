"""Interpretability measures beyond network dissection: teacher agreement, entropy, five-band scores, DiffROAR,
loss gradients, EPG / IoU against boxes and shift equivariance (see docs/evaluate.md).

`kdfast.metrics.diffroar` is the module (a package attribute never hides a submodule); the function is
`kdfast.metrics.diffroar.diffroar`.
"""
from kdfast.metrics import diffroar
from kdfast.metrics.agreement import top1_agreement
from kdfast.metrics.auroc import rowwise_auroc
from kdfast.metrics.diffroar import keep_mask, remove_and_fill
from kdfast.metrics.entropy import category_entropy, entire_entropy
from kdfast.metrics.fiveband import binary_split_scores, five_band, five_band_scores, normalize_heatmap
from kdfast.metrics.localization import box_iou, boxes_to_mask, energy_pointing_game
from kdfast.metrics.lossgrad import gradient_display
from kdfast.metrics.shift import shift_equivariance

__all__ = [
    "binary_split_scores", "box_iou", "boxes_to_mask", "category_entropy", "diffroar", "energy_pointing_game",
    "entire_entropy", "five_band", "five_band_scores", "gradient_display", "keep_mask", "normalize_heatmap",
    "remove_and_fill", "rowwise_auroc", "shift_equivariance", "top1_agreement",
]
