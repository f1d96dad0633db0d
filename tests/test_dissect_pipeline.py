"""End-to-end dissection through the CLI on a synthetic Broden with a planted-detector model: the units get
the planted labels, tally.csv equals an independent per-image/per-unit re-implementation of the method
(both denominators), a sweep equals separate runs, a killed run resumes to identical files."""
import csv
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import planted_model
from dissect_helpers import QUANTILE, SYNTHETIC, output_files, planted_args
from kdfast.data.broden import BrodenDataset
from kdfast.dissect import cli


@pytest.fixture(scope="module")
def single_runs(broden, tmp_path_factory):
    """{quantile: output folder} of plain single-quantile runs, made on first use."""
    made = {}

    def run(quantile):
        if quantile not in made:
            out = tmp_path_factory.mktemp(f"single{quantile}")
            cli.main(planted_args(broden, out, "planted", "--quantile", str(quantile)))
            made[quantile] = out
        return made[quantile]

    return run


def read_tally(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference_tally(root, quantile, gated):
    """Section 1 of SEEDS.md written out directly: exact k-th largest per unit over all raw values, per image
    and per unit a half-pixel bilinear upsampling (float64) thresholded with '>', and counts in Python."""
    data = BrodenDataset(root)
    model = planted_model.planted().eval()
    with torch.no_grad():
        acts = torch.cat([
            model.features(torch.from_numpy(data.load(i)["image"].copy()).permute(2, 0, 1)[None].float() / 255)
            for i in range(len(data))
        ]).numpy()
    n, units, h, w = acts.shape
    k = max(1, math.ceil(Fraction(repr(quantile)) * n * h * w))
    thresholds = [np.sort(acts[:, u].ravel())[::-1][k - 1] for u in range(units)]
    num_labels, num_categories = len(data.label_names), len(data.categories)
    cat = data.label_category
    count = np.zeros(num_labels, np.int64)
    inter = np.zeros((units, num_labels), np.int64)
    act = np.zeros((units, num_categories), np.int64)
    for i in range(n):
        item = data.load(i)
        planes, image_labels = item["planes"], item["image_labels"]
        sh, sw = data.seg_size
        present = set()
        for plane in planes:
            found = np.bincount(plane.ravel(), minlength=num_labels)
            found[0] = 0
            count += found
            present |= set(np.flatnonzero(found))
        for label in image_labels:
            count[label] += sh * sw
            present.add(label)
        for u in range(units):
            up = F.interpolate(torch.from_numpy(acts[i, u]).double()[None, None], size=(sh, sw), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
            mask = up > thresholds[u]
            hits = np.zeros(num_labels, np.int64)
            for plane in planes:
                hits += np.bincount(plane[mask], minlength=num_labels)
            hits[0] = 0
            for label in image_labels:
                hits[label] += mask.sum()
            inter[u] += hits
            touched = set(np.flatnonzero(hits)) if gated else present
            for c in {cat[label] for label in touched if cat[label] >= 0}:
                act[u, c] += mask.sum()
    return data, count, inter, act


def expected_rows(data, count, inter, act):
    """tally.csv rows as the reference sees them: {column: value}, best score first."""
    cat = data.label_category
    concepts = [label for label in range(1, len(data.label_names)) if cat[label] >= 0]

    def iou(u, label):
        denominator = act[u, cat[label]] + count[label] - inter[u, label]
        return inter[u, label] / denominator if denominator > 0 else 0.0

    rows = []
    for u in range(inter.shape[0]):
        best = max(concepts, key=lambda label: (iou(u, label), -label))
        row = {"unit": u + 1, "category": data.categories[cat[best]], "label": data.label_names[best],
               "score": iou(u, best)}
        for c, name in enumerate(data.categories):
            labels = [label for label in concepts if cat[label] == c]
            top = max(labels, key=lambda label: (iou(u, label), -label))
            row.update({f"{name}-label": data.label_names[top], f"{name}-truth": count[top],
                        f"{name}-activation": act[u, c], f"{name}-intersect": inter[u, top],
                        f"{name}-iou": iou(u, top)})
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["score"], r["unit"]))


@pytest.mark.parametrize("denominator", ["lite", "netdissect"])
def test_planted_detectors_and_reference_counts(broden, single_runs, tmp_path, denominator):
    if denominator == "lite":
        out = single_runs(QUANTILE)
    else:
        out = tmp_path / "out"
        # Also runs the model again in pass 2 (no activation cache), as resumed runs do.
        cli.main(planted_args(broden, out, "planted", "--quantile", str(QUANTILE), "--denominator", denominator,
                              "--activation-cache-gb", "0"))
    rows = read_tally(out / "features" / "tally.csv")
    by_unit = {int(r["unit"]): r for r in rows}
    assert (by_unit[1]["label"], by_unit[1]["category"]) == ("red", "color")
    assert (by_unit[2]["label"], by_unit[2]["category"]) == ("ocean", "scene")
    assert float(by_unit[1]["score"]) > 0.3 and float(by_unit[2]["score"]) > 0.05
    assert float(by_unit[4]["score"]) == 0.0 and float(by_unit[5]["score"]) == 0.0  # constant and dead units

    expected = expected_rows(*reference_tally(broden, QUANTILE, gated=denominator == "lite"))
    assert [int(r["unit"]) for r in rows] == [r["unit"] for r in expected]
    for got, want in zip(rows, expected):
        for column, value in want.items():
            if isinstance(value, str):
                assert got[column] == value, (column, got["unit"])
            elif isinstance(value, float):
                assert float(got[column]) == value, (column, got["unit"])
            else:
                assert int(got[column]) == value, (column, got["unit"])

    summary = json.loads((out / "features" / "summary.json").read_text())
    detectors = [r for r in expected if r["score"] >= 0.05]
    assert summary["total"] == len(detectors)
    assert summary["unique"] == len({r["label"] for r in detectors})
    assert sum(summary["detectors"].values()) == len(detectors)
    assert summary["detectors"]["color"] == sum(r["category"] == "color" for r in detectors)
    assert (summary["layer"], summary["units"], summary["images"]) == ("features", 5, SYNTHETIC["images"])
    assert (summary["quantile"], summary["iou_threshold"], summary["denominator"]) == (QUANTILE, 0.05, denominator)
    html = (out / "features" / "report.html").read_text()
    assert f"{len(detectors)}/5 units covering {summary['unique']} concepts with IoU ≥ 0.05" in html
    for r in expected:  # every unit has a strip, detector or not
        assert (out / "features" / "images" / f"unit{r['unit']:04d}.jpg").is_file()


def test_sweep_equals_separate_runs(broden, single_runs, tmp_path):
    quantiles = (0.02, QUANTILE)
    out = tmp_path / "sweep"
    cli.main(planted_args(broden, out, "planted", "--quantiles", ",".join(map(str, quantiles)),
                          "--iou-thresholds", "0.05:0.3:0.05"))
    sweep_files = output_files(out / "features")
    for q in quantiles:
        single = output_files(single_runs(q) / "features")
        assert {k[len(f"q{q}/"):]: v for k, v in sweep_files.items() if k.startswith(f"q{q}/")} == single
    with open(out / "features" / "sweep.csv", newline="") as f:
        sweep = list(csv.DictReader(f))
    thresholds = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert [(float(r["quantile"]), float(r["iou_threshold"])) for r in sweep] == [
        (q, t) for q in quantiles for t in thresholds]
    for r in sweep:
        single = read_tally(single_runs(float(r["quantile"])) / "features" / "tally.csv")
        scores = [float(row["score"]) for row in single]
        assert int(r["total"]) == sum(s >= float(r["iou_threshold"]) for s in scores)
    assert (out / "features" / "sweep.png").is_file() and (out / "features" / "report.html").is_file()


def test_killed_run_resumes_to_identical_files(broden, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    cli.main(planted_args(broden, reference, "crashing", "--quantile", str(QUANTILE)))
    out = tmp_path / "resumed"
    args = planted_args(broden, out, "crashing", "--quantile", str(QUANTILE), "--checkpoint-every", "1")
    # 40 images in batches of 8: the layer check's and the shape probe's forwards, then 5 batches per pass.
    monkeypatch.setenv("PLANTED_CRASH_AFTER", "4")  # dies in pass 1, batch 2
    with pytest.raises(Exception, match="planted crash"):
        cli.main(args)
    monkeypatch.setenv("PLANTED_CRASH_AFTER", "7")  # resumes pass 1 at batch 2, dies in pass 2, batch 2
    with pytest.raises(Exception, match="planted crash"):
        cli.main(args)
    assert not (out / "features").exists()
    state = torch.load(out / ".checkpoints" / "rank0.pt", weights_only=True)
    assert (state["pass1_next"], state["pass2_next"]) == (5, 2)
    monkeypatch.delenv("PLANTED_CRASH_AFTER")
    cli.main(args)
    assert output_files(out) == output_files(reference)

    with pytest.raises(ValueError, match=r"different arguments \(quantiles.*--restart"):
        cli.main(planted_args(broden, out, "crashing", "--quantile", "0.02"))


def test_killed_run_without_weights_resumes_with_the_same_seeded_model(broden, tmp_path, monkeypatch):
    """A random-init model (no --weights) is drawn from --seed, not from the process's random state: a run
    killed between the passes and resumed in a 'new process' (another global seed) writes the uninterrupted
    run's files byte for byte; another --seed is another model, which the checkpoint refuses."""
    torch.manual_seed(1)
    reference = tmp_path / "reference"
    cli.main(planted_args(broden, reference, "random_conv_crashing", "--quantile", str(QUANTILE)))
    out = tmp_path / "resumed"
    args = planted_args(broden, out, "random_conv_crashing", "--quantile", str(QUANTILE), "--checkpoint-every", "1",
                        "--activation-cache-gb", "0")
    torch.manual_seed(2)
    monkeypatch.setenv("PLANTED_CRASH_AFTER", "7")  # 2 probe forwards and 5 batches: dies at pass 2's first batch
    with pytest.raises(Exception, match="planted crash"):
        cli.main(args)
    state = torch.load(out / ".checkpoints" / "rank0.pt", weights_only=True)
    assert (state["pass1_next"], state["pass2_next"]) == (5, 0)
    monkeypatch.delenv("PLANTED_CRASH_AFTER")
    with pytest.raises(ValueError, match=r"different arguments \(seed: 0 then, 1 now"):
        cli.main([*args, "--seed", "1"])
    torch.manual_seed(3)
    cli.main(args)
    assert output_files(out) == output_files(reference)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["seed"] == 0 and run["weights"] is None and run["versions"]["torch"] == torch.__version__


def test_torchvision_model_several_layers(broden, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "out"
    result = cli.main(["--model", "resnet18", "--layers", "layer3", "layer4", "--broden", str(broden),
                       "--out", str(out), "--batch-size", "20", "--workers", "1", "--quiet", "--preprocess", "lite"])
    for layer, units in (("layer3", 256), ("layer4", 512)):
        assert len(read_tally(out / layer / "tally.csv")) == units
        summary = json.loads((out / layer / "summary.json").read_text())
        assert summary["units"] == units and summary["model"] == "resnet18"
        assert result.maxima[layer].shape == (SYNTHETIC["images"], units)
    table = cli.summary_table(result)
    assert "layer3" in table and "layer4" in table


def test_zero_detectors_report(broden, tmp_path):
    out = tmp_path / "out"
    cli.main(planted_args(broden, out, "planted", "--quantile", str(QUANTILE), "--iou-threshold", "1"))
    summary = json.loads((out / "features" / "summary.json").read_text())
    assert summary["total"] == 0 and summary["unique"] == 0
    html = (out / "features" / "report.html").read_text()
    assert "0/5 units covering 0 concepts" in html and "No unit reached" in html
    assert (out / "features" / "detectors.png").is_file()


def test_category_selection(broden, tmp_path):
    out = tmp_path / "out"
    cli.main(planted_args(broden, out, "planted", "--quantile", str(QUANTILE), "--categories", "scene", "color",
                          "--broden-cache", str(tmp_path / "cache")))
    rows = read_tally(out / "features" / "tally.csv")
    assert list(rows[0])[4:] == [f"{c}-{field}" for c in ("color", "scene")
                                 for field in ("label", "truth", "activation", "intersect", "iou")]
    assert {r["category"] for r in rows} <= {"color", "scene"}
    by_unit = {int(r["unit"]): r for r in rows}
    assert (by_unit[1]["label"], by_unit[2]["label"]) == ("red", "ocean")
    assert by_unit[3]["category"] in ("color", "scene")  # the mix unit's material label is not a candidate
    summary = json.loads((out / "features" / "summary.json").read_text())
    assert list(summary["detectors"]) == ["color", "scene"]


def test_pack_only(broden, tmp_path, capsys):
    args = ["--pack-only", "--broden", str(broden), "--broden-cache", str(tmp_path / "cache"), "--quiet"]
    assert cli.main(args) is None
    assert (tmp_path / "cache" / "meta.json").is_file()
    assert f"packed {SYNTHETIC['images']} Broden images" in capsys.readouterr().out
