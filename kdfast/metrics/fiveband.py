"""Five-band scores of a saliency map against a ternary ground-truth heatmap (Tjoa & Guan 2020; ICML 2023 §5.1).

Ground truth per pixel: 0 background, 1 localisation (where the object is), 2 distinguishing feature. A heatmap
h = Σ_c attribution, divided by max|h| per image, is cut into five bands −2..2 by thresholds t1 < t2 < t3 < t4
(h ≤ t1 → −2, ≤ t2 → −1, ≤ t3 → 0, ≤ t4 → 1, else 2). The thresholds start at [−.7, −.3, .3, .7] and move toward
0 by δ = 0.005 per step over 56 steps; every step scores the banded map against the ground truth, and the scores
are reported as the mean and the max over the steps.
"""
import torch

from ._checks import check_finite, check_nonempty, check_same_shape, check_tensor
from .auroc import rowwise_auroc

DEFAULT_THRESHOLDS = (-0.7, -0.3, 0.3, 0.7)
STEPS = 56
DELTA = 0.005
EPS = 1e-6
# The heat values Tjoa & Guan give ground-truth classes 0, 1, 2; banded with DEFAULT_THRESHOLDS they become 0, 1, 2.
GROUND_TRUTH_HEAT = (0.0, 0.4, 0.9)
# Binary splits of the ternary ground truth: name → (positive classes, index of the threshold above which a pixel
# is predicted positive). "0|12": background vs object (band ≥ 1, h > t3); "01|2": the rest vs the
# distinguishing feature (band 2, h > t4).
SPLITS = {"0|12": ((1, 2), 2), "01|2": ((2,), 3)}
_CHUNK = 64  # images scored at a time, to bound memory on large maps


def normalize_heatmap(attributions):
    """(N, C, H, W) or (N, H, W) attributions → (N, H, W) float32 heatmaps h = Σ_c a / max|Σ_c a| per image.

    An all-zero map (no attribution at all) stays all zero."""
    check_tensor("attributions", attributions, dims=(3, 4), floating=True)
    check_finite("attributions", attributions)
    h = attributions.sum(dim=1) if attributions.dim() == 4 else attributions
    h = h.float()
    scale = h.abs().amax(dim=(1, 2), keepdim=True) if h.shape[0] else h.new_ones(0, 1, 1)
    return h / torch.where(scale > 0, scale, torch.ones_like(scale))


def five_band(heatmaps, thresholds=DEFAULT_THRESHOLDS):
    """int8 bands −2..2 of `heatmaps` (any shape) for increasing thresholds (t1, t2, t3, t4)."""
    t = torch.as_tensor(thresholds, dtype=torch.float64)
    if t.shape != (4,) or not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"thresholds must be 4 increasing values, got {t.tolist()}")
    # Compared in the maps' own precision, so a float32 value equal to float32(t) counts as ≤ t.
    # bucketize(right=False) gives i with t[i-1] < h ≤ t[i]: h ≤ t1 → 0, …, h > t4 → 4.
    return (torch.bucketize(heatmaps, t.to(heatmaps.dtype), right=False) - 2).to(torch.int8)


def ground_truth_bands(ground_truth):
    """Bands of the ground-truth heat values: classes 0, 1, 2 → bands 0, 1, 2."""
    heat = torch.tensor(GROUND_TRUTH_HEAT, dtype=torch.float64)[ground_truth.long()]
    return five_band(heat, DEFAULT_THRESHOLDS)


def threshold_schedule(thresholds=DEFAULT_THRESHOLDS, steps=STEPS, delta=DELTA):
    """(steps, 4) float64: step s moves every threshold toward 0 by s·delta (s = 0 … steps−1)."""
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if delta < 0:
        raise ValueError(f"delta must be ≥ 0, got {delta}")
    t = torch.as_tensor(thresholds, dtype=torch.float64)
    five_band(t, t)  # validates: 4 increasing values
    if bool((t == 0).any()) or not (t[1] < 0 < t[2]):
        raise ValueError(f"thresholds must be two negative then two positive values, got {t.tolist()}")
    moved = t.abs() - (steps - 1) * delta
    if bool((moved <= 0).any()):
        raise ValueError(f"{steps} steps of {delta} move thresholds {t.tolist()} across 0; use fewer steps or a "
                         "smaller delta")
    s = torch.arange(steps, dtype=torch.float64).unsqueeze(1)
    return t - torch.sign(t) * s * delta


def _check_maps(heatmaps, ground_truth):
    check_tensor("heatmaps", heatmaps, dims=3, floating=True)
    check_tensor("ground_truth", ground_truth, dims=3, floating=False)
    check_same_shape("heatmaps", heatmaps, "ground_truth", ground_truth)
    check_nonempty("heatmaps", heatmaps)
    check_finite("heatmaps", heatmaps)
    if float(heatmaps.abs().max()) > 1 + 1e-6:
        raise ValueError(f"heatmaps must be normalised to [-1, 1] (max |h| is {float(heatmaps.abs().max()):.4g}); "
                         "pass attributions through normalize_heatmap first")
    bad = (ground_truth < 0) | (ground_truth > 2)
    if bool(bad.any()):
        i = int(bad.flatten(1).any(dim=1).nonzero()[0])
        found = sorted(ground_truth[i].unique().tolist())
        raise ValueError(f"ground_truth must hold classes 0, 1, 2; image {i} holds {found}")


def _summary(per_image):
    """(steps, N) per-image scores → curve averaged over images, its mean and its max over the steps."""
    curve = per_image.mean(dim=1)
    return {"per_step": curve.tolist(), "mean": float(curve.mean()), "max": float(curve.max())}


def five_band_scores(heatmaps, ground_truth, thresholds=DEFAULT_THRESHOLDS, steps=STEPS, delta=DELTA):
    """Pixel accuracy, recall, precision and FPR of banded heatmaps against the ternary ground truth.

    heatmaps: (N, H, W) normalised to [−1, 1]; ground_truth: (N, H, W) integer classes 0/1/2. Per step and image:
    TP = #(h≠0 ∧ g≠0 ∧ h=g), FP = #(h≠0 ∧ g=0) + #(h≠0 ∧ g≠0 ∧ h≠g), TN = #(h=0 ∧ g=0), FN = #(h=0 ∧ g≠0),
    recall = TP/(TP+FN+ε), precision = TP/(TP+FP+ε), FPR = FP/(FP+TN+ε), pixel accuracy = mean(h = g); each score
    is averaged over images, then summarised over the steps. Returns {score: {"per_step", "mean", "max"}}."""
    _check_maps(heatmaps, ground_truth)
    schedule = threshold_schedule(thresholds, steps, delta)
    names = ("pixel_accuracy", "recall", "precision", "fpr")
    per_image = {name: [] for name in names}
    for start in range(0, heatmaps.shape[0], _CHUNK):
        h_maps = heatmaps[start:start + _CHUNK].flatten(1)
        g = ground_truth_bands(ground_truth[start:start + _CHUNK].flatten(1))
        obj = g != 0
        rows = {name: [] for name in names}
        for t in schedule:
            h = five_band(h_maps, t)
            hit = h != 0
            tp = (hit & obj & (h == g)).sum(1).double()
            fp = ((hit & ~obj) | (hit & obj & (h != g))).sum(1).double()
            tn = (~hit & ~obj).sum(1).double()
            fn = (~hit & obj).sum(1).double()
            rows["pixel_accuracy"].append((h == g).double().mean(1))
            rows["recall"].append(tp / (tp + fn + EPS))
            rows["precision"].append(tp / (tp + fp + EPS))
            rows["fpr"].append(fp / (fp + tn + EPS))
        for name in names:
            per_image[name].append(torch.stack(rows[name]))
    return {name: _summary(torch.cat(per_image[name], dim=1)) for name in names}


def split_has_both(ground_truth, split):
    """(N,) bool: images whose ground truth holds both a positive and a negative pixel for `split`."""
    positive = _positive_mask(ground_truth.flatten(1), split)
    return positive.any(dim=1) & (~positive).any(dim=1)


def _positive_mask(g, split):
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose from {list(SPLITS)}")
    classes, _ = SPLITS[split]
    return torch.isin(g, torch.tensor(classes, dtype=g.dtype))


def binary_split_scores(heatmaps, ground_truth, split, thresholds=DEFAULT_THRESHOLDS, steps=STEPS, delta=DELTA):
    """AUROC, precision, recall and F1 for a binary split of the ground truth ("0|12" or "01|2").

    AUROC ranks the normalised heat per pixel (threshold-free). Precision/recall/F1 predict positive where the
    heat exceeds the split's threshold (t3 for "0|12", t4 for "01|2") at each step of the schedule; F1 =
    2PR/(P+R+ε). Scores are per image, averaged over images. Every image must hold both classes of the split
    (select with split_has_both; e.g. the empty class has no object). Returns {"auroc": float, "precision" /
    "recall" / "f1": {"per_step", "mean", "max"}}."""
    _check_maps(heatmaps, ground_truth)
    schedule = threshold_schedule(thresholds, steps, delta)
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose from {list(SPLITS)}")
    _, threshold_index = SPLITS[split]
    lacking = (~split_has_both(ground_truth, split)).nonzero()
    if lacking.numel():
        i = int(lacking[0])
        missing = "positive" if not bool(_positive_mask(ground_truth[i].flatten(), split).any()) else "negative"
        raise ValueError(f"image {i} has no {missing} pixels for split '{split}'; select images with "
                         "split_has_both (the empty class has no object)")
    aurocs, precision, recall, f1 = [], [], [], []
    for start in range(0, heatmaps.shape[0], _CHUNK):
        h = heatmaps[start:start + _CHUNK].flatten(1)
        positive = _positive_mask(ground_truth[start:start + _CHUNK].flatten(1), split)
        aurocs.append(rowwise_auroc(h.double(), positive))
        p_rows, r_rows, f_rows = [], [], []
        for t in schedule:
            predicted = h > t[threshold_index].to(h.dtype)
            tp = (predicted & positive).sum(1).double()
            fp = (predicted & ~positive).sum(1).double()
            fn = (~predicted & positive).sum(1).double()
            p, r = tp / (tp + fp + EPS), tp / (tp + fn + EPS)
            p_rows.append(p)
            r_rows.append(r)
            f_rows.append(2 * p * r / (p + r + EPS))
        precision.append(torch.stack(p_rows))
        recall.append(torch.stack(r_rows))
        f1.append(torch.stack(f_rows))
    return {
        "auroc": float(torch.cat(aurocs).mean()),
        "precision": _summary(torch.cat(precision, dim=1)),
        "recall": _summary(torch.cat(recall, dim=1)),
        "f1": _summary(torch.cat(f1, dim=1)),
    }
