"""The dissection building blocks on their own: IoU/labels/detectors from counts against direct loops,
sweep parsing, tally.csv layout, mask overlays, input normalisation, layer hooks and checkpoints."""
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdfast.dissect import PREPROCESS, Concepts, LayerRecorder, LayerTally, Normalizer, parse_values
from kdfast.dissect.checkpoint import Checkpoint, RunMismatch
from kdfast.dissect.report import mask_overlay
from kdfast.dissect.results import sweep_rows, tally_header, write_tally_csv


def random_tally(rng, units, categories=3, labels=9):
    """Counts shaped like a real tally (inter <= count, inter <= act of the label's category), with zeros."""
    label_category = rng.integers(-1, categories, labels)
    label_category[0] = -1
    label_counts = rng.integers(0, 50, labels) * rng.integers(0, 2, labels)
    intersections = np.minimum(rng.integers(0, 50, (units, labels)), label_counts)
    activations = np.zeros((units, categories), np.int64)
    for c in range(categories):
        members = label_category == c
        top = intersections[:, members].max(axis=1, initial=0)
        activations[:, c] = top + rng.integers(0, 30, units) * rng.integers(0, 2, units)
    concepts = Concepts(tuple(f"cat{c}" for c in range(categories)), tuple(f"l{i}" for i in range(labels)),
                        label_category.astype(np.int64))
    return LayerTally("layer", 0.005, "lite", np.zeros(units, np.float32), label_counts.astype(np.int64),
                      intersections.astype(np.int64), activations, concepts)


def direct_iou(t, u, label):
    c = int(t.concepts.label_category[label])
    if label == 0 or c < 0:
        return 0.0
    denominator = int(t.activations[u, c]) + int(t.label_counts[label]) - int(t.intersections[u, label])
    return int(t.intersections[u, label]) / denominator if denominator else 0.0


@pytest.mark.parametrize("units", [1, 2, 7])
def test_iou_labels_detectors_against_loops(units):
    rng = np.random.default_rng(units)
    for _ in range(5):
        t = random_tally(rng, units)
        iou = t.iou()
        assert iou.dtype == np.float64
        for u in range(units):
            for label in range(len(t.concepts.label_names)):
                assert iou[u, label] == direct_iou(t, u, label)
        concepts = [lb for lb in range(1, 9) if t.concepts.label_category[lb] >= 0]
        if not concepts:
            continue
        labels = t.unit_labels()
        for u, found in enumerate(labels):
            best = max(concepts, key=lambda lb: (direct_iou(t, u, lb), -lb))  # ties: lowest label number
            assert (found.unit, found.label, found.score) == (u, best, direct_iou(t, u, best))
        for threshold in (1e-9, 0.2, 1.0):
            detectors = t.detectors(threshold)
            picked = [lb for lb in labels if lb.score >= threshold]
            assert detectors.total == len(picked)
            assert detectors.unique == len({lb.label for lb in picked})
            assert sum(detectors.per_category.values()) == len(picked)
            assert [d.score for d in detectors.units] == sorted((lb.score for lb in picked), reverse=True)


def test_ties_and_all_zero_units():
    concepts = Concepts(("a", "b"), ("-", "x", "y", "z"), np.array([-1, 1, 0, 0]))
    counts = np.array([0, 10, 10, 10])
    inter = np.array([[0, 5, 0, 5], [0, 0, 0, 0]])
    act = np.array([[10, 10], [0, 0]])  # unit 0: x (b) and z (a) tie at 5/15; unit 1 never fires
    t = LayerTally("l", 0.01, "lite", np.zeros(2, np.float32), counts, inter, act, concepts)
    labels = t.unit_labels()
    assert [(u.label, u.category, u.score) for u in labels] == [(1, 1, 5 / 15), (1, 1, 0.0)]
    found = t.detectors(5 / 15)
    assert (found.total, found.unique, found.per_category) == (1, 1, {"a": 0, "b": 1})


def test_tally_csv_layout(tmp_path):
    concepts = Concepts(("color", "scene", "empty"), ("-", "red", "ocean"), np.array([-1, 0, 1]))
    t = LayerTally("l", 0.01, "lite", np.zeros(2, np.float32), np.array([0, 8, 4]), np.array([[0, 1, 4], [0, 6, 0]]),
                   np.array([[5, 4, 0], [6, 0, 0]]), concepts)
    write_tally_csv(tmp_path / "tally.csv", t)
    with open(tmp_path / "tally.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == tally_header(concepts.categories)
    assert rows[0][:9] == ["unit", "category", "label", "score", "color-label", "color-truth", "color-activation",
                           "color-intersect", "color-iou"]
    # unit 1: ocean 4/(4+4-4) = 1 (red 1/(5+8-1)); unit 2: red 6/(6+8-6) = 0.75. Best score first.
    assert rows[1][:4] == ["1", "scene", "ocean", "1.0"]
    assert rows[2][:4] == ["2", "color", "red", "0.75"]
    assert rows[1][4:9] == ["red", "8", "5", "1", repr(1 / 12)]
    assert rows[1][-5:] == ["", "", "", "", ""]  # a category without labels


def test_sweep_rows():
    rng = np.random.default_rng(0)
    t = random_tally(rng, 6, labels=12)
    rows = sweep_rows([t], (0.1, 0.5))
    assert [(r["quantile"], r["iou_threshold"]) for r in rows] == [(0.005, 0.1), (0.005, 0.5)]
    assert [r["total"] for r in rows] == [t.detectors(0.1).total, t.detectors(0.5).total]


def test_parse_values():
    assert parse_values("0.001:0.010:0.001", "q") == tuple(i / 1000 for i in range(1, 11))
    assert parse_values("0.01:0.05:0.01", "t") == (0.01, 0.02, 0.03, 0.04, 0.05)
    assert parse_values("0.005", "q") == (0.005,)
    assert parse_values("0.01, 0.05", "t") == (0.01, 0.05)
    assert parse_values("0.1:0.35:0.1", "q") == (0.1, 0.2, 0.3)
    for bad in ("0.1:0.2", "0.2:0.1:0.1", "0.1:0.2:0", "a,b", "", "1:2:x"):
        with pytest.raises(ValueError, match="must be 'start:stop:step'|is empty"):
            parse_values(bad, "--quantiles")


@pytest.mark.parametrize("size, out", [((1, 1), (4, 4)), ((3, 5), (7, 11)), ((7, 7), (112, 112))])
def test_mask_overlay(size, out):
    gen = torch.Generator().manual_seed(sum(size) + out[0])
    unit_map = torch.rand(size, generator=gen)
    image = torch.randint(0, 256, out + (3,), generator=gen, dtype=torch.uint8).numpy()
    threshold = float(unit_map.flatten()[0])
    overlay = mask_overlay(image, unit_map, threshold)
    up = F.interpolate(unit_map[None, None].double(), size=out, mode="bilinear", align_corners=False)[0, 0]
    mask = (up > threshold).numpy()
    inside = overlay[mask]
    assert np.all((inside == image[mask]) | (inside == np.array([255, 220, 0], np.uint8)))  # image or edge
    outside = overlay[~mask]
    assert np.all((outside == (image[~mask] * 0.25).astype(np.uint8)) | (outside == 0))  # darkened or the rim
    constant = mask_overlay(image, torch.full(size, 2.0), 2.0)  # ties at the threshold: nothing is active
    assert np.array_equal(constant, (image * 0.25).astype(np.uint8))


def test_normalizer():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 5, 4), generator=gen, dtype=torch.uint8)
    got = Normalizer(*PREPROCESS["lite"], "cpu")(images)
    ndl_mean = torch.tensor([124.6901, 118.6897, 109.5388], dtype=torch.float64).view(1, 3, 1, 1)
    want = (images.double() - ndl_mean) / 57.12
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    got = Normalizer(*PREPROCESS["imagenet"], "cpu")(images)
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in PREPROCESS["imagenet"])
    torch.testing.assert_close(got.double(), (images.double() / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="images must be uint8"):
        Normalizer(*PREPROCESS["lite"], "cpu")(images.float())
    with pytest.raises(ValueError, match="std values must be positive"):
        Normalizer((0, 0, 0), (1, 0, 1), "cpu")


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU(inplace=True)
        self.flat = nn.Flatten(2)
        self.after = nn.Linear(4, 2)
        self.after_calls = 0

    def forward(self, x):
        x = self.conv(x)
        kept = x.clone()
        x = self.relu(x)  # in place on conv's output
        self.after_calls += 1
        return self.after(self.flat(x + kept).mean(-1))


def test_layer_recorder():
    model = Probe().eval()
    x = torch.randn(2, 3, 6, 6)
    recorder = LayerRecorder(model, ["conv", "relu"])
    out = recorder(x)
    assert model.after_calls == 0  # the forward stops once every layer is recorded
    recorder.close()
    conv = model.conv(x)
    assert bool((conv < 0).any())
    torch.testing.assert_close(out["conv"], conv)  # copied before the in-place ReLU changed it
    torch.testing.assert_close(out["relu"], conv.relu())
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['conv2'\]; the model's modules are: conv, relu"):
        LayerRecorder(model, ["conv2"])
    with pytest.raises(ValueError, match="layer 'flat' outputs \\(2, 4, 16\\)"):
        LayerRecorder(model, ["conv", "flat"])(x)

    shared = nn.Sequential()
    relu = nn.ReLU()
    shared.add_module("a", relu)
    shared.add_module("b", nn.Conv2d(3, 3, 1))
    shared.add_module("c", relu)
    shared.add_module("d", nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="layer 'a' ran more than once"):
        LayerRecorder(shared, ["a", "d"])(x)


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    identity = {"model": "m", "quantiles": ["0.005"], "batch_size": 8}
    checkpoint = Checkpoint(tmp_path, 0, identity)
    assert checkpoint.load() is None
    checkpoint.save({"pass1_next": 3, "values": torch.arange(4.0)})
    state = checkpoint.load()
    assert state["pass1_next"] == 3 and torch.equal(state["values"], torch.arange(4.0))
    assert [p.name for p in (tmp_path / ".checkpoints").iterdir()] == ["rank0.pt"]  # no temporary left behind
    other = Checkpoint(tmp_path, 0, {**identity, "batch_size": 16})
    with pytest.raises(RunMismatch, match="batch_size: 8 then, 16 now.*--restart"):
        other.load()
    (tmp_path / ".checkpoints" / "rank0.pt").write_bytes(b"torn")
    with pytest.raises(RunMismatch, match="cannot read checkpoint"):
        checkpoint.load()
