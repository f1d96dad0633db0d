"""Broden data layer: the synthetic writer, the validating reader and the packed memory-mapped cache.

The reader and the writer are checked against direct re-implementations written here (csv + PIL decoding of
the files, label statistics recounted from the decoded planes); every error case is produced on a broken copy
of a synthetic dataset and must name the offending file (and CSV line/column)."""

import csv
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdfast.data import COLOR_PALETTE, SCENE_BACKGROUNDS, BrodenDataset, BrodenFormatError, PackedBroden, default_broden
from kdfast.data import synthetic_broden as synthetic_module
from kdfast.data.synthetic_broden import synthetic_broden

SIZE = 64
IMAGES = 20
SEED = 2  # this seed's first 20 images include texture images, material planes and second part planes
ALL = ["color", "object", "part", "material", "scene", "texture"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_broden(
        tmp_path_factory.mktemp("broden") / "syn", images=IMAGES, size=SIZE, seed=SEED, progress=False
    )


@pytest.fixture
def broken(synthetic, tmp_path):
    """A fresh writable copy of the synthetic dataset, to damage."""
    return Path(shutil.copytree(synthetic, tmp_path / "broken", ignore=shutil.ignore_patterns(".kdfast_cache")))


# ---- direct re-implementations -------------------------------------------------------------------------------


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def decode_png(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1]


def expected_items(root, categories=ALL):
    """Per image (image, planes, image_labels) decoded independently of kdfast, for `categories`."""
    items = []
    for row in read_csv(root / "index.csv"):
        image = np.asarray(Image.open(root / "images" / row["image"]).convert("RGB"))
        planes, labels = [], []
        for category in categories:
            for entry in filter(None, row[category].split(";")):
                if entry.isdigit():
                    labels.append(int(entry))
                else:
                    planes.append(decode_png(root / "images" / entry))
        seg = (int(row["sh"]), int(row["sw"]))
        items.append((image, np.array(planes, dtype=np.int64).reshape((-1,) + seg), labels))
    return items


def edit_line(path, line, edit):
    lines = path.read_text().splitlines()
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines) + "\n")


def index_row(root, i):
    """index.csv fields of image i; image i sits on line i + 2."""
    return read_csv(root / "index.csv")[i]


def first_row(root, predicate):
    return next(i for i, row in enumerate(read_csv(root / "index.csv")) if predicate(row))


def last_row(root, predicate):
    return [i for i, row in enumerate(read_csv(root / "index.csv")) if predicate(row)][-1]


# ---- synthetic writer ----------------------------------------------------------------------------------------


def test_synthetic_csvs_match_the_decoded_files(synthetic):
    categories = [row["name"] for row in read_csv(synthetic / "category.csv")]
    assert categories == ALL
    labels = read_csv(synthetic / "label.csv")
    assert [int(r["number"]) for r in labels] == list(range(1, len(labels) + 1))
    num_labels = len(labels) + 1

    # Recount per (label, category) image counts and coverage straight from the files.
    images = np.zeros((num_labels, len(ALL)), dtype=np.int64)
    any_images = np.zeros(num_labels, dtype=np.int64)
    coverage = np.zeros((num_labels, len(ALL)))
    category_images = np.zeros(len(ALL), dtype=np.int64)
    for row in read_csv(synthetic / "index.csv"):
        present = np.zeros((num_labels, len(ALL)), dtype=bool)
        assert (int(row["ih"]), int(row["iw"]), int(row["sh"]), int(row["sw"])) == (SIZE, SIZE, SIZE // 2, SIZE // 2)
        assert Image.open(synthetic / "images" / row["image"]).size == (SIZE, SIZE)
        for c, category in enumerate(ALL):
            entries = [e for e in row[category].split(";") if e]
            counts = np.zeros(num_labels)
            for entry in entries:
                if category in ("scene", "texture"):
                    counts[int(entry)] += 1
                else:
                    png = np.asarray(Image.open(synthetic / "images" / entry))
                    assert png.shape == (SIZE // 2, SIZE // 2, 3) and not png[..., 2].any()
                    counts += (
                        np.bincount(decode_png(synthetic / "images" / entry).ravel(), minlength=num_labels)
                        / png[..., 0].size
                    )
            counts[0] = 0
            present[:, c] = counts > 0
            coverage[:, c] += counts
        images += present
        any_images += present.any(axis=1)
        category_images += present.any(axis=0)

    for r in labels:
        n = int(r["number"])
        field = dict(re.fullmatch(r"(\w+)\((\d+)\)", f).groups() for f in r["category"].split(";"))
        assert {c: int(k) for c, k in field.items()} == {c: images[n, ALL.index(c)] for c in field}
        assert all(images[n, c] == 0 for c in range(len(ALL)) if ALL[c] not in field)
        assert int(r["frequency"]) == any_images[n]
        assert float(r["coverage"]) == pytest.approx(coverage[n].sum(), abs=1e-5)
    for c, row in enumerate(read_csv(synthetic / "category.csv")):
        members = [int(r["number"]) for r in labels if re.search(rf"\b{row['name']}\(", r["category"])]
        assert (int(row["first"]), int(row["last"]), int(row["count"])) == (min(members), max(members), len(members))
        assert int(row["frequency"]) == category_images[c]
        c_rows = read_csv(synthetic / f"c_{row['name']}.csv")
        assert [int(r["code"]) for r in c_rows] == list(range(1, len(members) + 1))
        assert [int(r["number"]) for r in c_rows] == members
        assert [int(r["frequency"]) for r in c_rows] == [images[n, c] for n in members]

    # The dataset exercises what it is meant to: dual-category labels, texture-only images, multi-plane parts.
    assert sum(";" in r["category"] for r in labels) >= 1
    rows = read_csv(synthetic / "index.csv")
    texture_rows = [r for r in rows if r["texture"]]
    assert texture_rows and all(not any(r[c] for c in ALL if c != "texture") for r in texture_rows)
    assert any(r["material"] for r in rows) and any(";" in r["part"] for r in rows)
    assert all(r["scene"] and r["color"] and r["object"] and r["part"] for r in rows if not r["texture"])


def test_synthetic_pixels_show_their_concepts(synthetic):
    names = {int(r["number"]): r["name"] for r in read_csv(synthetic / "label.csv")}
    for row in read_csv(synthetic / "index.csv"):
        if row["texture"]:
            continue
        image = np.asarray(Image.open(synthetic / "images" / row["image"]).convert("RGB")).astype(np.float64)
        upsample = lambda plane: np.repeat(np.repeat(plane, 2, axis=0), 2, axis=1)  # noqa: E731
        obj = upsample(decode_png(synthetic / "images" / row["object"]))
        color = upsample(decode_png(synthetic / "images" / row["color"]))
        material = upsample(decode_png(synthetic / "images" / row["material"])) if row["material"] else 0 * obj
        np.testing.assert_array_equal(obj > 0, color > 0)  # every object pixel has a colour, background has none
        background = np.median(image[obj == 0], axis=0)
        assert np.abs(background - SCENE_BACKGROUNDS[names[int(row["scene"])]]).max() < 12
        for label in np.unique(color[(color > 0) & (material == 0)]):
            region = (color == label) & (material == 0)
            if region.sum() >= 64:
                assert np.abs(np.median(image[region], axis=0) - COLOR_PALETTE[names[label]]).max() < 25


def test_synthetic_is_deterministic_per_seed_and_image(tmp_path):
    a = synthetic_broden(tmp_path / "a", images=6, size=32, seed=5, progress=False)
    b = synthetic_broden(tmp_path / "b", images=6, size=32, seed=5, progress=False)
    c = synthetic_broden(tmp_path / "c", images=6, size=32, seed=6, progress=False)
    short = synthetic_broden(tmp_path / "short", images=3, size=32, seed=5, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "index.csv").read_bytes() != (c / "index.csv").read_bytes()
    for p in (short / "images").rglob("*"):
        if p.is_file():
            assert p.read_bytes() == (a / p.relative_to(short)).read_bytes()


def test_synthetic_rejects_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        synthetic_broden(tmp_path / "full", images=2, size=32, progress=False)
    with pytest.raises(ValueError, match="even"):
        synthetic_broden(tmp_path / "odd", images=2, size=33, progress=False)
    with pytest.raises(ValueError, match="images"):
        synthetic_broden(tmp_path / "none", images=0, size=32, progress=False)


def test_default_broden_is_built_once(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_module, "DEFAULT_IMAGES", 3)
    monkeypatch.setattr(synthetic_module, "DEFAULT_SIZE", 32)
    monkeypatch.setenv("KDFAST_CACHE", str(tmp_path / "env"))
    path = default_broden()
    assert path.parent == tmp_path / "env"
    assert len(BrodenDataset(path)) == 3
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".building")]

    def no_rebuild(*args, **kwargs):
        raise AssertionError("default_broden rebuilt an existing dataset")

    monkeypatch.setattr(synthetic_module, "synthetic_broden", no_rebuild)
    assert default_broden() == path
    with pytest.raises(AssertionError):
        default_broden(tmp_path / "explicit")  # an explicit cache_root wins over $KDFAST_CACHE
    assert not [p for p in (tmp_path / "explicit").iterdir()]  # the failed build left nothing behind


# ---- reader ----------------------------------------------------------------------------------------------------


def test_reader_matches_independent_decoding(synthetic):
    ds = BrodenDataset(synthetic)
    assert ds.categories == ALL
    assert ds.image_level_categories == ["scene", "texture"]
    assert ds.pixel_categories == ["color", "object", "part", "material"]
    assert ds.label_names == ["-"] + [r["name"] for r in read_csv(synthetic / "label.csv")]
    assert ds.image_size == (SIZE, SIZE) and ds.seg_size == (SIZE // 2, SIZE // 2)
    assert len(ds) == IMAGES
    for i, (image, planes, labels) in enumerate(expected_items(synthetic)):
        item = ds.load(i)
        assert ds.image_path(i) == synthetic / "images" / index_row(synthetic, i)["image"]
        assert item["image"].dtype == np.uint8 and item["planes"].dtype == np.int32
        np.testing.assert_array_equal(item["image"], image)
        np.testing.assert_array_equal(item["planes"], planes)
        assert item["image_labels"] == labels
    with pytest.raises(IndexError, match="out of range"):
        ds.load(IMAGES)
    np.testing.assert_array_equal(ds.load(-1)["planes"], ds.load(IMAGES - 1)["planes"])


def test_category_filter(synthetic):
    ds = BrodenDataset(synthetic, categories=["texture", "part", "object"])
    assert ds.categories == ["object", "part", "texture"]  # category.csv order, whatever order was asked
    assert ds.pixel_categories == ["object", "part"] and ds.image_level_categories == ["texture"]
    expected = expected_items(synthetic, ds.categories)
    for i in range(len(ds)):
        item = ds.load(i)
        np.testing.assert_array_equal(item["planes"], expected[i][1])
        assert item["image_labels"] == expected[i][2]
    names = ds.label_names
    assert ds.label_category[names.index("red")] == -1  # colour not selected
    assert ds.label_category[names.index("ring")] == 0
    assert ds.label_category[names.index("edge")] == 1
    assert ds.label_category[names.index("checkered")] == 2
    assert ds.label_category[names.index("striped")] == 2  # material not selected: texture is its only category
    for bad, error in ((["colour"], "not in category.csv"), ([], "empty"), (["scene", "scene"], "twice")):
        with pytest.raises(ValueError, match=error):
            BrodenDataset(synthetic, categories=bad)
    with pytest.raises(TypeError, match="list"):
        BrodenDataset(synthetic, categories="scene")


def set_label_categories(root, name, field):
    path = root / "label.csv"
    rows = path.read_text().splitlines()
    for k, line in enumerate(rows):
        fields = line.split(",")
        if fields[1] == name:
            fields[2] = field
            rows[k] = ",".join(fields)
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    "field, categories, expected",
    [
        ("material(5);texture(9)", None, "texture"),  # highest count wins, whatever the order in the field
        ("texture(9);material(5)", None, "texture"),
        ("material(9);texture(9)", None, "material"),  # tie: the earlier category of category.csv
        ("texture(9);material(9)", None, "material"),
        ("material(5);texture(9)", ["material", "scene"], "material"),  # only selected categories compete
        ("material(5);texture(9)", ["color", "scene"], None),  # none selected: -1
        ("", None, None),  # a label listed in no category
    ],
)
def test_primary_category(broken, field, categories, expected):
    set_label_categories(broken, "striped", field)
    ds = BrodenDataset(broken, categories=categories)
    primary = ds.label_category[ds.label_names.index("striped")]
    assert primary == (ds.categories.index(expected) if expected else -1)
    assert ds.label_category[0] == -1 and ds.label_category.dtype == np.int64
    assert ds.label_category.shape == (len(ds.label_names),)


def test_label_csv_may_list_the_unlabeled_row(broken):
    path = broken / "label.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "0,-,,0,0.0,"] + lines[1:]) + "\n")
    ds = BrodenDataset(broken)
    assert ds.label_names[0] == "-" and ds.label_names[1:] == [r["name"] for r in read_csv(broken / "label.csv")][1:]


# ---- packed cache ----------------------------------------------------------------------------------------------


def assert_same_as_load(packed, ds):
    assert len(packed) == len(ds)
    for attribute in (
        "categories",
        "image_level_categories",
        "pixel_categories",
        "label_names",
        "image_size",
        "seg_size",
    ):
        assert getattr(packed, attribute) == getattr(ds, attribute)
    np.testing.assert_array_equal(packed.label_category, ds.label_category)
    assert packed.label_category.dtype == np.int64
    for i in range(len(ds)):
        item, expected = packed[i], ds.load(i)
        assert item["index"] == i
        assert item["image"].dtype == torch.uint8 and item["planes"].dtype == torch.int32
        assert item["image_labels"].dtype == torch.int32
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), expected["image"])
        np.testing.assert_array_equal(item["planes"].numpy(), expected["planes"])
        assert item["image_labels"].tolist() == expected["image_labels"]
        np.testing.assert_array_equal(packed.image(i), expected["image"])


def test_pack_round_trip(synthetic, tmp_path):
    ds = BrodenDataset(synthetic)
    packed = ds.pack(tmp_path / "cache", progress=False)
    assert_same_as_load(packed, ds)
    assert_same_as_load(PackedBroden.open(tmp_path / "cache"), ds)
    assert_same_as_load(pickle.loads(pickle.dumps(packed)), ds)  # DataLoader workers reopen the memmaps
    with pytest.raises(IndexError, match="out of range"):
        packed[IMAGES]


def test_pack_records_that_its_labels_were_validated(synthetic, tmp_path):
    """A complete pack vouches for its label ranges (checked as index.csv was read and each PNG decoded; the
    dissection's tally then reads no label on the host); a cache whose meta predates the record does not."""
    packed = BrodenDataset(synthetic).pack(tmp_path / "cache", progress=False)
    assert packed.labels_validated
    labels = len(packed.label_names)
    assert int(np.asarray(packed._planes).max()) < labels and int(np.asarray(packed._labels).max()) < labels
    meta_path = tmp_path / "cache" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["labels_validated"]
    meta_path.write_text(json.dumps(meta))
    assert not PackedBroden.open(tmp_path / "cache").labels_validated


def test_pack_default_cache_dir_and_reuse(broken, monkeypatch):
    ds = BrodenDataset(broken)
    packed = ds.pack(progress=False)
    assert (broken / ".kdfast_cache" / "meta.json").is_file()

    def no_decode(self, i):
        raise AssertionError("a complete matching cache was decoded again")

    monkeypatch.setattr(BrodenDataset, "_decode", no_decode)
    again = BrodenDataset(broken).pack(progress=False)
    np.testing.assert_array_equal(again.batch(range(IMAGES))["seg"], packed.batch(range(IMAGES))["seg"])
    monkeypatch.undo()

    # Other categories (here with arrays of the very same shapes), or edited CSVs: rebuilt, with a warning.
    subset = BrodenDataset(broken, categories=ALL[:-1])
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = subset.pack(progress=False)
    assert_same_as_load(rebuilt, subset)
    edit_line(broken / "label.csv", 2, lambda s: re.sub(r",[0-9.]+,$", ",0.5,", s))
    with pytest.warns(UserWarning, match="rebuilding"):
        BrodenDataset(broken, categories=ALL[:-1]).pack(progress=False)


def test_pack_refuses_a_foreign_folder(synthetic, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BrodenFormatError, match="mine.*not empty"):
        BrodenDataset(synthetic).pack(tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_pack_with_worker_pool_equals_serial(synthetic, tmp_path):
    ds = BrodenDataset(synthetic)
    serial = ds.pack(tmp_path / "serial", progress=False)
    pooled = ds.pack(tmp_path / "pooled", workers=2, progress=False)
    for name in ("images", "planes", "plane_offsets", "image_labels"):
        assert (tmp_path / "serial" / f"{name}.bin").read_bytes() == (tmp_path / "pooled" / f"{name}.bin").read_bytes()
    assert_same_as_load(pooled, ds)
    assert len(serial) == len(pooled)


def test_pack_resumes_after_interruption(synthetic, tmp_path, monkeypatch):
    ds = BrodenDataset(synthetic)
    real_decode = BrodenDataset._decode
    calls = []

    def failing_decode(self, i):
        if len(calls) == 7:
            raise RuntimeError("simulated crash")
        calls.append(i)
        return real_decode(self, i)

    monkeypatch.setattr(BrodenDataset, "_decode", failing_decode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ds.pack(tmp_path / "cache", progress=False)
    with pytest.raises(BrodenFormatError, match=r"cache.*incomplete.*resume"):
        PackedBroden.open(tmp_path / "cache")

    monkeypatch.setattr(BrodenDataset, "_decode", lambda self, i: calls.append(i) or real_decode(self, i))
    calls.clear()
    packed = ds.pack(tmp_path / "cache", progress=False)
    assert calls == list(range(7, IMAGES))  # the seven finished images were kept
    assert_same_as_load(packed, ds)


def test_open_reports_missing_and_corrupt_caches(synthetic, tmp_path):
    with pytest.raises(BrodenFormatError, match="nowhere.*does not exist"):
        PackedBroden.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BrodenFormatError, match="empty.*meta.json is missing"):
        PackedBroden.open(tmp_path / "empty")
    BrodenDataset(synthetic).pack(tmp_path / "cache", progress=False)
    planes = tmp_path / "cache" / "planes.bin"
    planes.write_bytes(planes.read_bytes()[:-10])
    with pytest.raises(BrodenFormatError, match="cache is corrupt: planes.bin"):
        PackedBroden.open(tmp_path / "cache")
    (tmp_path / "cache" / "meta.json").write_text("{not json")
    with pytest.raises(BrodenFormatError, match="meta.json is unreadable"):
        PackedBroden.open(tmp_path / "cache")


@pytest.fixture(scope="module")
def packed(synthetic, tmp_path_factory):
    return BrodenDataset(synthetic).pack(tmp_path_factory.mktemp("packed"), progress=False)


def index_sets(synthetic):
    rows = read_csv(synthetic / "index.csv")
    textures = [i for i, r in enumerate(rows) if r["texture"]]
    objects = [i for i, r in enumerate(rows) if not r["texture"]]
    return [
        list(range(IMAGES)),
        [3, 1, 3, -1],  # any order, repeats, negative indices
        textures,  # no planes at all: Pmax = 0
        objects[:4],
        [textures[0], objects[0]],
        [objects[1]],
    ]


def test_batch_equals_collate(synthetic, packed):
    for indices in index_sets(synthetic):
        fast = packed.batch(indices)
        slow = PackedBroden.collate([packed[i] for i in indices])
        assert fast.keys() == slow.keys() == {"images", "seg", "image_labels", "indices"}
        for key in fast:
            assert fast[key].dtype == slow[key].dtype and fast[key].shape == slow[key].shape, key
            assert torch.equal(fast[key], slow[key]), key
        assert fast["indices"].tolist() == [i % IMAGES for i in indices]
    assert packed.batch(index_sets(synthetic)[2])["seg"].shape[1] == 0
    assert torch.equal(packed.batch(torch.tensor([2, 0]))["images"], packed.batch(np.array([2, 0]))["images"])


def test_batch_edge_cases(packed):
    empty = packed.batch([])
    assert empty["images"].shape == (0, 3, SIZE, SIZE) and empty["seg"].shape == (0, 0, SIZE // 2, SIZE // 2)
    assert empty["image_labels"].shape == (0, 0) and empty["indices"].shape == (0,)
    with pytest.raises(IndexError, match="indices"):
        packed.batch([0, IMAGES])
    with pytest.raises(TypeError, match="integers"):
        packed.batch([0.5])
    with pytest.raises(ValueError, match="at least one"):
        PackedBroden.collate([])


def test_collate_pads_with_zeros():
    def item(planes, labels, index):
        return {
            "image": torch.full((3, 4, 4), index, dtype=torch.uint8),
            "planes": torch.arange(1, planes * 4 + 1, dtype=torch.int32).reshape(planes, 2, 2),
            "image_labels": torch.arange(7, 7 + labels, dtype=torch.int32),
            "index": index,
        }

    out = PackedBroden.collate([item(0, 2, 5), item(3, 0, 9), item(1, 1, 2)])
    assert out["seg"].shape == (3, 3, 2, 2) and out["image_labels"].shape == (3, 2)
    assert not out["seg"][0].any() and not out["seg"][2, 1:].any()
    assert torch.equal(out["seg"][1], item(3, 0, 9)["planes"]) and torch.equal(
        out["seg"][2, 0], item(1, 1, 2)["planes"][0]
    )
    assert out["image_labels"].tolist() == [[7, 8], [0, 0], [7, 0]]
    assert out["indices"].tolist() == [5, 9, 2] and out["indices"].dtype == torch.int64
    assert out["images"][:, 0, 0, 0].tolist() == [5, 9, 2]
    only_images = PackedBroden.collate([item(0, 0, 1)])
    assert only_images["seg"].shape == (1, 0, 2, 2) and only_images["image_labels"].shape == (1, 0)


def test_image_level_only_selection_packs(synthetic, tmp_path):
    ds = BrodenDataset(synthetic, categories=["scene", "texture"])
    assert ds.pixel_categories == []
    packed = ds.pack(tmp_path / "cache", progress=False)
    assert_same_as_load(packed, ds)
    assert packed.batch(range(IMAGES))["seg"].shape == (IMAGES, 0, SIZE // 2, SIZE // 2)


# ---- errors: each names the file, and for CSVs the line and column ----------------------------------------------


@pytest.mark.parametrize("name", ["index.csv", "label.csv", "category.csv", "c_color.csv"])
def test_missing_csv(broken, name):
    (broken / name).unlink()
    with pytest.raises(BrodenFormatError, match=f"missing Broden file .*{re.escape(name)}"):
        BrodenDataset(broken)


def test_missing_category_file_of_unselected_category_is_fine(broken):
    (broken / "c_color.csv").unlink()
    assert BrodenDataset(broken, categories=["object"]).categories == ["object"]


CSV_DEFECTS = {
    "wrong header": ("label.csv", 1, lambda s: s.replace("coverage", "cover"), r"label\.csv line 1: expected header"),
    "too few fields": ("index.csv", 4, lambda s: s.rsplit(",", 1)[0], r"index\.csv line 4: expected 12 fields"),
    "too many fields": ("category.csv", 3, lambda s: s + ",7", r"category\.csv line 3: expected 5 fields"),
    "non-integer size": (
        "index.csv",
        5,
        lambda s: s.replace(",64,64,", ",6x4,64,", 1),
        r"index\.csv line 5, column 'ih': expected a non-negative integer, got '6x4'",
    ),
    "non-integer label number": (
        "label.csv",
        3,
        lambda s: "two" + s[1:],
        r"label\.csv line 3, column 'number': expected a non-negative integer",
    ),
    "non-integer category count": (
        "category.csv",
        2,
        lambda s: s.replace(",1,5,", ",1,five,"),
        r"category\.csv line 2, column 'last'",
    ),
    "non-integer code": ("c_object.csv", 2, lambda s: "x" + s, r"c_object\.csv line 2, column 'code'"),
    "bad coverage": (
        "label.csv",
        2,
        lambda s: re.sub(r",[0-9.]+,$", ",lots,", s),
        r"label\.csv line 2, column 'coverage': expected a number",
    ),
    "label gap": (
        "label.csv",
        3,
        lambda s: "3" + s[1:],
        r"label\.csv line 3, column 'number': expected label number 2",
    ),
    "bad category field": (
        "label.csv",
        2,
        lambda s: s.replace("color(", "color["),
        r"label\.csv line 2, column 'category': expected entries like",
    ),
    "unknown category in label.csv": (
        "label.csv",
        2,
        lambda s: s.replace("color(", "colour("),
        r"label\.csv line 2, column 'category': category 'colour' is not in category\.csv",
    ),
    "unknown category in index.csv": (
        "index.csv",
        1,
        lambda s: s.replace("material", "materials"),
        r"index\.csv line 1, column 'materials': category 'materials' is not in category\.csv",
    ),
    "c_ file names an unknown label": (
        "c_scene.csv",
        2,
        lambda s: s.replace(",15,", ",99,"),
        r"c_scene\.csv line 2, column 'number': label 99 is not in label\.csv",
    ),
}


@pytest.mark.parametrize("defect", sorted(CSV_DEFECTS))
def test_malformed_csv(broken, defect):
    name, line, edit, message = CSV_DEFECTS[defect]
    edit_line(broken / name, line, edit)
    with pytest.raises(BrodenFormatError, match=message):
        BrodenDataset(broken)


def test_index_must_have_every_category(broken):
    path = broken / "index.csv"
    rows = [row[:-1] for row in csv.reader(path.read_text().splitlines())]  # drop the texture column
    path.write_text("\n".join(",".join(row) for row in rows) + "\n")
    with pytest.raises(BrodenFormatError, match=r"index\.csv line 1: expected one column per category .*texture"):
        BrodenDataset(broken)


def test_inconsistent_sizes(broken):
    edit_line(broken / "index.csv", 6, lambda s: s.replace(",32,32,", ",32,30,", 1))
    with pytest.raises(
        BrodenFormatError,
        match=r"index\.csv line 6: ih,iw,sh,sw = \(64, 64, 32, 30\) differ from \(64, 64, 32, 32\) on line 2",
    ):
        BrodenDataset(broken)


def test_image_level_label_not_in_label_csv(broken):
    i = first_row(broken, lambda r: r["scene"])
    edit_line(broken / "index.csv", i + 2, lambda s: re.sub(r",\d+,$", ",99,", s))
    with pytest.raises(
        BrodenFormatError, match=rf"index\.csv line {i + 2}, column 'scene': label 99 is not in label\.csv"
    ):
        BrodenDataset(broken)


def test_image_level_label_zero_means_unlabeled(broken):
    i = first_row(broken, lambda r: r["scene"] and not r["texture"])
    edit_line(broken / "index.csv", i + 2, lambda s: re.sub(r",\d+,$", ",0,", s))
    assert BrodenDataset(broken).load(i)["image_labels"] == []


def test_column_mixing_labels_and_pngs(broken):
    i = last_row(broken, lambda r: r["scene"])  # earlier rows have already made 'scene' an image-level column
    edit_line(broken / "index.csv", i + 2, lambda s: re.sub(r",\d+,$", ",x.png,", s))
    with pytest.raises(BrodenFormatError, match=rf"index\.csv line {i + 2}, column 'scene': got a pixel entry 'x.png'"):
        BrodenDataset(broken)
    edit_line(broken / "index.csv", i + 2, lambda s: s.replace(",x.png,", ",x.jpg,"))
    with pytest.raises(
        BrodenFormatError, match=rf"line {i + 2}, column 'scene': expected a PNG file name or an integer"
    ):
        BrodenDataset(broken)


def damage(root, i, column, how):
    """Damages the file named in column `column` of image i; returns its path."""
    name = index_row(root, i)[column].split(";")[-1]
    path = root / "images" / name
    if how == "delete":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(
            b"\x89PNG\r\n\x1a\n" + b"garbage" * 20 if path.suffix == ".png" else b"\xff\xd8\xff" + b"junk" * 50
        )
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        how(path)
    return path


def resize(size):
    def apply(path):
        Image.open(path).resize(size, Image.NEAREST).save(path)

    return apply


def with_label(value):
    def apply(path):
        rgb = np.asarray(Image.open(path)).copy()
        rgb[3, 4] = (value % 256, value // 256, 0)
        Image.fromarray(rgb).save(path)

    return apply


def to_greyscale(path):
    Image.open(path).convert("L").save(path)


FILE_DEFECTS = {
    "missing image": (
        "image",
        "delete",
        r"missing file .*syn_0000\d\d\.jpg \(listed in .*index\.csv line {line}, column 'image'\)",
    ),
    "missing png": (
        "color",
        "delete",
        r"missing file .*_color\.png \(listed in .*index\.csv line {line}, column 'color'\)",
    ),
    "missing second part plane": ("part", "delete", r"missing file .*_part_2\.png .*column 'part'"),
    "corrupt png": (
        "object",
        "garbage",
        r"cannot decode .*_object\.png \(listed in .*index\.csv line {line}, column 'object'\)",
    ),
    "truncated png": ("material", "truncate", r"cannot decode .*_material\.png"),
    "corrupt image": ("image", "garbage", r"cannot decode .*\.jpg \(listed in .*line {line}, column 'image'\)"),
    "png label not in label.csv": (
        "color",
        with_label(300),
        r"_color\.png \(.*line {line}, column 'color'\) holds label 300 \(1 pixels >= 20\), which is not in label\.csv",
    ),
    "wrong png size": (
        "object",
        resize((30, 32)),
        r"segmentation .*_object\.png is 32x30 \(h x w\), but index\.csv .*line {line}.* says 32x32",
    ),
    "wrong image size": ("image", resize((64, 48)), r"image .*\.jpg is 48x64 \(h x w\), but index\.csv .* says 64x64"),
    "greyscale png": ("part", to_greyscale, r"_part_2\.png has mode L; expected an RGB\(A\) PNG"),
}


@pytest.mark.parametrize("defect", sorted(FILE_DEFECTS))
def test_broken_file(broken, defect):
    column, how, message = FILE_DEFECTS[defect]
    i = first_row(broken, lambda r: r["material"] and ";" in r["part"])
    damage(broken, i, column, how)
    ds = BrodenDataset(broken)  # files are checked as they are decoded, not up front
    message = message.format(line=i + 2)
    with pytest.raises(BrodenFormatError, match=message):
        ds.load(i)
    with pytest.raises(BrodenFormatError, match=message):
        ds.pack(broken / "cache", progress=False)


def test_pack_worker_errors_keep_their_type_and_message(broken):
    i = first_row(broken, lambda r: r["object"])
    path = damage(broken, i, "object", "garbage")
    with pytest.raises(BrodenFormatError, match=re.escape(path.name)):
        BrodenDataset(broken).pack(broken / "cache", workers=2, progress=False)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(BrodenFormatError, match="nowhere.*does not exist"):
        BrodenDataset(tmp_path / "nowhere")
