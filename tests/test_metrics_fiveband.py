import numpy as np
import pytest
import torch

from kdfast.metrics import fiveband as fb
from kdfast.metrics.auroc import rowwise_auroc


def test_five_band_hand_case():
    h = torch.tensor([-1.0, -0.7, -0.5, -0.3, 0.0, 0.3, 0.5, 0.7, 1.0])
    assert fb.five_band(h).tolist() == [-2, -2, -1, -1, 0, 0, 1, 1, 2]


def test_ground_truth_heat_bands_to_its_classes():
    g = torch.tensor([[0, 1, 2]])
    assert fb.ground_truth_bands(g).tolist() == [[0, 1, 2]]


def test_threshold_schedule():
    s = fb.threshold_schedule()
    assert s.shape == (56, 4)
    assert s[0].tolist() == pytest.approx([-0.7, -0.3, 0.3, 0.7])
    assert s[-1].tolist() == pytest.approx([-0.425, -0.025, 0.025, 0.425])
    with pytest.raises(ValueError, match="across 0"):
        fb.threshold_schedule(steps=80)
    with pytest.raises(ValueError, match="increasing"):
        fb.threshold_schedule((0.3, -0.3, 0.5, 0.7))


def test_normalize_heatmap():
    a = torch.tensor([[[[1.0, -4.0]], [[1.0, 2.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])  # (2, 2, 1, 2)
    h = fb.normalize_heatmap(a)
    assert h.tolist() == [[[1.0, -1.0]], [[0.0, 0.0]]]
    bad = a.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN.*sample 1"):
        fb.normalize_heatmap(bad)


def test_five_band_scores_hand_case():
    # One step at the default thresholds. bands h: [2, 0 | 1, -2]; ground truth [2, 0 | 2, 1].
    h = torch.tensor([[[0.9, 0.1], [0.5, -0.9]]])
    g = torch.tensor([[[2, 0], [2, 1]]])
    s = fb.five_band_scores(h, g, steps=1)
    # TP: (0,0). FP: (1,0) wrong band, (1,1) wrong band. TN: (0,1). FN: none.
    assert s["pixel_accuracy"]["mean"] == pytest.approx(0.5)
    assert s["recall"]["mean"] == pytest.approx(1 / (1 + 1e-6))
    assert s["precision"]["mean"] == pytest.approx(1 / (3 + 1e-6))
    assert s["fpr"]["mean"] == pytest.approx(2 / (3 + 1e-6))


def _direct_scores(h, g, schedule):
    names = ("pixel_accuracy", "recall", "precision", "fpr")
    curves = {n: [] for n in names}
    for t in schedule.tolist():
        per_image = {n: [] for n in names}
        for hi, gi in zip(h.tolist(), g.tolist()):
            tp = fp = tn = fn = same = 0
            pixels = [(x, y) for rh, rg in zip(hi, gi) for x, y in zip(rh, rg)]
            for x, y in pixels:
                band = -2 if x <= t[0] else -1 if x <= t[1] else 0 if x <= t[2] else 1 if x <= t[3] else 2
                same += band == y
                if band != 0 and y != 0 and band == y:
                    tp += 1
                elif band != 0:
                    fp += 1
                elif y == 0:
                    tn += 1
                else:
                    fn += 1
            per_image["pixel_accuracy"].append(same / len(pixels))
            per_image["recall"].append(tp / (tp + fn + 1e-6))
            per_image["precision"].append(tp / (tp + fp + 1e-6))
            per_image["fpr"].append(fp / (fp + tn + 1e-6))
        for n in names:
            curves[n].append(np.mean(per_image[n]))
    return {n: {"mean": np.mean(c), "max": np.max(c)} for n, c in curves.items()}


@pytest.mark.parametrize("n,h,w,steps", [(1, 1, 1, 1), (3, 4, 5, 3), (70, 3, 3, 5)])
def test_five_band_scores_match_direct(gen, n, h, w, steps):
    heat = fb.normalize_heatmap(torch.randn(n, h, w, generator=gen))
    truth = torch.randint(0, 3, (n, h, w), generator=gen)
    got = fb.five_band_scores(heat, truth, steps=steps, delta=0.05)
    expected = _direct_scores(heat, truth, fb.threshold_schedule(steps=steps, delta=0.05))
    for name, stats in expected.items():
        assert got[name]["mean"] == pytest.approx(stats["mean"], abs=1e-9)
        assert got[name]["max"] == pytest.approx(stats["max"], abs=1e-9)


def test_five_band_scores_constant_map_and_bad_inputs():
    zero = torch.zeros(2, 3, 3)
    truth = torch.zeros(2, 3, 3, dtype=torch.long)
    s = fb.five_band_scores(zero, truth, steps=2)
    assert s["pixel_accuracy"]["mean"] == 1.0 and s["fpr"]["max"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        fb.five_band_scores(torch.zeros(2, 3, 4), truth)
    with pytest.raises(ValueError, match="normalised"):
        fb.five_band_scores(zero + 2, truth)
    with pytest.raises(ValueError, match="image 1 holds"):
        fb.five_band_scores(zero, torch.stack([truth[0], truth[1] + 3]))
    with pytest.raises(ValueError, match="NaN"):
        fb.five_band_scores(torch.full((2, 3, 3), float("nan")), truth)
    with pytest.raises(ValueError, match="integer"):
        fb.five_band_scores(zero, truth.float())


def _pairwise_auroc(scores, labels):
    pos = [s for s, lab in zip(scores, labels) if lab]
    neg = [s for s, lab in zip(scores, labels) if not lab]
    return np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg])


def test_auroc_hand_cases_and_errors():
    labels = torch.tensor([[True, False, False], [True, False, True], [False, True, False]])
    scores = torch.tensor([[1.0, 1.0, 1.0], [3.0, 1.0, 2.0], [0.5, 0.2, 0.1]])
    assert rowwise_auroc(scores, labels).tolist() == pytest.approx([0.5, 1.0, 0.5])
    with pytest.raises(ValueError, match="row 0 has 0 positives"):
        rowwise_auroc(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool))


@pytest.mark.parametrize("n,d", [(1, 2), (4, 30), (9, 101)])
def test_auroc_matches_pairwise(gen, n, d):
    scores = torch.randint(0, 5, (n, d), generator=gen).double()  # many ties
    labels = torch.rand(n, d, generator=gen) < 0.4
    labels[:, 0], labels[:, 1] = True, False
    expected = [_pairwise_auroc(s.tolist(), lab.tolist()) for s, lab in zip(scores, labels)]
    assert rowwise_auroc(scores, labels).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("split", ["0|12", "01|2"])
def test_binary_split_scores_match_direct(gen, split):
    n, h, w, steps = 5, 4, 4, 3
    heat = fb.normalize_heatmap(torch.randn(n, h, w, generator=gen))
    truth = torch.randint(0, 3, (n, h, w), generator=gen)
    truth[:, 0, 0], truth[:, 0, 1] = 0, 2  # both classes present in every split
    got = fb.binary_split_scores(heat, truth, split, steps=steps, delta=0.05)
    schedule = fb.threshold_schedule(steps=steps, delta=0.05)
    column = 2 if split == "0|12" else 3
    positive = (truth >= 1) if split == "0|12" else (truth == 2)
    aucs = [_pairwise_auroc(heat[i].flatten().tolist(), positive[i].flatten().tolist()) for i in range(n)]
    assert got["auroc"] == pytest.approx(np.mean(aucs))
    curves = {"precision": [], "recall": [], "f1": []}
    for t in schedule[:, column].tolist():
        p_i, r_i, f_i = [], [], []
        for i in range(n):
            pred = (heat[i] > t).flatten().tolist()
            pos = positive[i].flatten().tolist()
            tp = sum(a and b for a, b in zip(pred, pos))
            fp = sum(a and not b for a, b in zip(pred, pos))
            fn = sum(b and not a for a, b in zip(pred, pos))
            p, r = tp / (tp + fp + 1e-6), tp / (tp + fn + 1e-6)
            p_i.append(p), r_i.append(r), f_i.append(2 * p * r / (p + r + 1e-6))
        curves["precision"].append(np.mean(p_i)), curves["recall"].append(np.mean(r_i))
        curves["f1"].append(np.mean(f_i))
    for name, curve in curves.items():
        assert got[name]["mean"] == pytest.approx(np.mean(curve))
        assert got[name]["max"] == pytest.approx(np.max(curve))


def test_binary_split_rejects_image_without_positives():
    truth = torch.zeros(2, 2, 2, dtype=torch.long)
    truth[0, 0, 0] = 2
    assert fb.split_has_both(truth, "01|2").tolist() == [True, False]
    with pytest.raises(ValueError, match="image 1 has no positive pixels"):
        fb.binary_split_scores(torch.zeros(2, 2, 2), truth, "01|2")
    with pytest.raises(ValueError, match="unknown split"):
        fb.binary_split_scores(torch.zeros(2, 2, 2), truth, "0|2")
