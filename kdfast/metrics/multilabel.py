"""Multi-label classification and localisation measures as the e2KD paper reports them on VOC (Table 4),
following the implementation of Rao et al. 2023 that the paper uses:

* F1 = 2·TP / (2·TP + FP + FN), micro-averaged over every (image, class) pair, a class predicted when its
  logit ≥ 0 (their MultiLabelMetrics with threshold 0.0 on logits, i.e. probability ≥ 0.5).
* EPG and IoU per explained (image, class): the class's explanation against the union of that class's boxes
  (kdfast.metrics.localization; IoU threshold 0.05 in the e2KD paper), averaged over all explained pairs.
  Rao et al. explain every ground-truth class during evaluation; `classes="predicted"` explains the classes
  predicted AND present (a predicted class without a box has nothing to be scored against).
"""
import torch

from kdfast.metrics.localization import box_iou, energy_pointing_game

E2KD_IOU_THRESHOLD = 0.05


def multilabel_counts(logits, targets, threshold=0.0):
    """(TP, FP, FN, TN) over all (image, class) pairs; a class is predicted when logit >= threshold."""
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits and targets must both be (N, C), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    predicted = logits >= threshold
    actual = targets > 0.5
    return (int((predicted & actual).sum()), int((predicted & ~actual).sum()), int((~predicted & actual).sum()),
            int((~predicted & ~actual).sum()))


def f1_from_counts(tp, fp, fn):
    """2·TP / (2·TP + FP + FN); 0 when there is nothing to score (no positives, none predicted)."""
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def multilabel_f1(logits, targets, threshold=0.0):
    tp, fp, fn, _ = multilabel_counts(logits, targets, threshold)
    return f1_from_counts(tp, fp, fn)


def explained_pairs(logits, targets, boxes, classes="ground_truth"):
    """[(image, class)] to score: every ground-truth class with a box ("ground_truth", Rao et al.), or those
    also predicted (logit >= 0, "predicted")."""
    if classes not in ("ground_truth", "predicted"):
        raise ValueError(f"classes must be 'ground_truth' or 'predicted', got {classes!r}")
    chosen = targets > 0.5
    if classes == "predicted":
        chosen = chosen & (logits >= 0)
    pairs = []
    for image, cls in chosen.nonzero().tolist():
        if bool(((boxes[image, :, 0] == cls) & (boxes[image, :, 3] > boxes[image, :, 1])
                 & (boxes[image, :, 4] > boxes[image, :, 2])).any()):
            pairs.append((image, cls))
    return pairs


def localisation_scores(maps, masks, iou_threshold=E2KD_IOU_THRESHOLD):
    """{"epg": (N,), "iou": (N,)} for explanation maps (N, H, W) and bool box masks (N, H, W)."""
    return {"epg": energy_pointing_game(maps, masks), "iou": box_iou(maps, masks, iou_threshold)}


def mean_or_none(values):
    values = torch.as_tensor(values, dtype=torch.float64)
    return float(values.mean()) if values.numel() else None
