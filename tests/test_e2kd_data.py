"""Waterbirds and VOC readers on generated files in the official layouts, their errors on malformed inputs,
and the group / multi-label measures by hand on fabricated predictions."""
import csv

import pytest
import torch

from kdfast.data.boxes import BoxedTransform
from kdfast.data.voc import VOCMultiLabel, generate_voc_style
from kdfast.data.waterbirds import GROUP_NAMES, WaterbirdsDataset, generate_waterbirds_style
from kdfast.metrics.groups import group_metrics
from kdfast.metrics.multilabel import explained_pairs, multilabel_counts, multilabel_f1

TRANSFORM = BoxedTransform(16, normalize=False)


@pytest.fixture(scope="module")
def waterbirds(tmp_path_factory):
    return generate_waterbirds_style(tmp_path_factory.mktemp("wb") / "set", train_per_class=20, eval_per_group=3,
                                     correlation=0.9, size=24, seed=1)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return generate_voc_style(tmp_path_factory.mktemp("voc") / "set", num_classes=3, train=6, val=3, test=3, size=24)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_waterbirds_generator_and_reader(waterbirds):
    rows = _rows(waterbirds / "metadata.csv")
    assert list(rows[0]) == ["img_id", "img_filename", "y", "split", "place", "place_filename"]
    train = [r for r in rows if r["split"] == "0"]
    assert len(train) == 40 and sum(r["y"] == r["place"] for r in train) == 36  # 90% correlation
    for split in ("1", "2"):  # balanced groups
        groups = [2 * int(r["y"]) + int(r["place"]) for r in rows if r["split"] == split]
        assert sorted(groups) == sorted([0, 1, 2, 3] * 3)
    test = WaterbirdsDataset(waterbirds, "test", TRANSFORM)
    item = test[0]
    assert item["images"].shape == (3, 16, 16) and item["groups"] == 2 * item["targets"] + int(test.rows[0]["place"])
    box = item["boxes"][0].tolist()
    assert box[0] == item["targets"] and 0 <= box[1] < box[3] <= 16 and 0 <= box[2] < box[4] <= 16
    raw = [r for r in _rows(waterbirds / "boxes.csv") if r["img_filename"] == test.rows[0]["img_filename"]]
    assert [round(int(raw[0][k]) * 16 / 24) for k in ("x0", "y0", "x1", "y1")] == box[1:]
    again = generate_waterbirds_style(waterbirds, train_per_class=20, eval_per_group=3, correlation=0.9, size=24,
                                      seed=1)
    assert again == waterbirds
    with pytest.raises(ValueError, match="generated with"):
        generate_waterbirds_style(waterbirds, train_per_class=21, eval_per_group=3, correlation=0.9, size=24, seed=1)


def test_waterbirds_errors_name_file_and_row(waterbirds, tmp_path):
    import shutil

    copy = tmp_path / "wb"
    shutil.copytree(waterbirds, copy)
    rows = _rows(copy / "metadata.csv")
    rows[4]["img_filename"] = "landbird/missing.png"
    _write_rows(copy / "metadata.csv", rows)
    with pytest.raises(FileNotFoundError, match=r"metadata.csv row 6: image 'landbird/missing.png' does not exist"):
        WaterbirdsDataset(copy, "train", TRANSFORM)
    rows = _rows(waterbirds / "metadata.csv")
    rows[2]["place"] = "2"
    _write_rows(copy / "metadata.csv", rows)
    with pytest.raises(ValueError, match=r"metadata.csv row 4 \(.*\): column 'place' must be one of \[0, 1\]"):
        WaterbirdsDataset(copy, "train", TRANSFORM)
    _write_rows(copy / "metadata.csv", [{k: v for k, v in r.items() if k != "split"} for r in _rows(waterbirds / "metadata.csv")])
    with pytest.raises(ValueError, match="missing column.*split"):
        WaterbirdsDataset(copy, "train", TRANSFORM)
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        WaterbirdsDataset(waterbirds, "dev", TRANSFORM)


def test_voc_generator_and_reader(voc):
    data = VOCMultiLabel(voc, "train", TRANSFORM)
    assert data.classes == ["aeroplane", "bicycle", "bird"] and len(data) == 6
    item = data[0]
    objects = data.objects[0]
    assert item["targets"].tolist() == [float(any(o[0] == c for o in objects)) for c in range(3)]
    scale = 16 / 24
    first = item["boxes"][0].tolist()
    assert first == [objects[0][0]] + [round(v * scale) for v in objects[0][1:]]
    assert (item["boxes"][len(objects):] == -1).all()
    # VOC's 1-based inclusive coordinates become 0-based half-open
    import xml.etree.ElementTree as ET

    box = ET.parse(voc / "Annotations" / f"{data.ids[0]}.xml").getroot().find("object/bndbox")
    assert objects[0][1] == int(box.findtext("xmin")) - 1 and objects[0][3] == int(box.findtext("xmax"))


def test_voc_errors_name_the_file(voc, tmp_path):
    import shutil

    copy = tmp_path / "voc"
    shutil.copytree(voc, copy)
    ids = (copy / "ImageSets" / "Main" / "train.txt").read_text().split()
    (copy / "Annotations" / f"{ids[1]}.xml").write_text("<annotation><object><name>bird</name>")
    with pytest.raises(ValueError, match=rf"{ids[1]}.xml: malformed XML"):
        VOCMultiLabel(copy, "train", TRANSFORM)
    shutil.copy(voc / "Annotations" / f"{ids[1]}.xml", copy / "Annotations" / f"{ids[1]}.xml")
    text = (copy / "Annotations" / f"{ids[2]}.xml").read_text()
    (copy / "Annotations" / f"{ids[2]}.xml").write_text(text.replace("<name>", "<name>x", 1))
    with pytest.raises(ValueError, match=rf"{ids[2]}.xml: object 0: unknown class 'x"):
        VOCMultiLabel(copy, "train", TRANSFORM)
    shutil.copy(voc / "Annotations" / f"{ids[2]}.xml", copy / "Annotations" / f"{ids[2]}.xml")
    (copy / "JPEGImages" / f"{ids[3]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"train.txt line 4: image .*{ids[3]}.jpg does not exist"):
        VOCMultiLabel(copy, "train", TRANSFORM)
    with pytest.raises(FileNotFoundError, match="trainval.txt does not exist"):
        VOCMultiLabel(copy, "trainval", TRANSFORM)


def test_group_metrics_by_hand():
    # 10 samples; groups: 0 LL, 1 LW, 2 WL, 3 WW (y = group // 2)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    targets = groups // 2
    predictions = torch.tensor([0, 0, 1, 1, 1, 0, 1, 1, 1, 0])
    teacher = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 1])
    m = group_metrics(predictions, targets, groups, teacher)
    # correct: LL 2/3, LW 0/2, WL 1/2, WW 2/3
    assert m["acc"] == pytest.approx(5 / 10)
    assert m[f"acc_{GROUP_NAMES[0]}"] == pytest.approx(2 / 3) and m[f"acc_{GROUP_NAMES[1]}"] == 0.0
    assert m[f"acc_{GROUP_NAMES[2]}"] == pytest.approx(1 / 2) and m[f"acc_{GROUP_NAMES[3]}"] == pytest.approx(2 / 3)
    assert m["worst_group_acc"] == 0.0
    assert m["in_distribution_acc"] == pytest.approx(4 / 6) and m["out_of_distribution_acc"] == pytest.approx(1 / 4)
    # agreement: [1,0,1, 0,1, 1,0, 1,1,0] -> LL 2/3, LW 1/2, WL 1/2, WW 2/3
    assert m["agreement"] == pytest.approx(6 / 10) and m["worst_group_agreement"] == pytest.approx(1 / 2)
    assert m["in_distribution_agreement"] == pytest.approx(4 / 6)
    assert m["out_of_distribution_agreement"] == pytest.approx(2 / 4)
    only_ll = group_metrics(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    assert only_ll["worst_group_acc"] == 1.0 and only_ll["out_of_distribution_acc"] is None
    assert "agreement" not in only_ll
    with pytest.raises(ValueError, match=r"groups must lie in \[0, 4\)"):
        group_metrics(torch.tensor([0]), torch.tensor([0]), torch.tensor([4]))


def test_multilabel_f1_and_explained_pairs_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.0], [-0.5, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    # predicted (logit >= 0): [1,0,1], [0,1,0] -> TP 2, FP 1, FN 2, TN 1
    assert multilabel_counts(logits, targets) == (2, 1, 2, 1)
    assert multilabel_f1(logits, targets) == pytest.approx(4 / 7)
    assert multilabel_f1(torch.full((1, 2), -1.0), torch.zeros(1, 2)) == 0.0
    boxes = torch.full((2, 3, 5), -1)
    boxes[0, 0] = torch.tensor([0, 1, 1, 4, 4])
    boxes[0, 1] = torch.tensor([1, 2, 2, 2, 5])  # empty: class 1 of image 0 cannot be scored
    boxes[1, 0] = torch.tensor([1, 0, 0, 3, 3])
    boxes[1, 1] = torch.tensor([2, 0, 0, 3, 3])
    assert explained_pairs(logits, targets, boxes) == [(0, 0), (1, 1), (1, 2)]
    assert explained_pairs(logits, targets, boxes, "predicted") == [(0, 0), (1, 1)]
