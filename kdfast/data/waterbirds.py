"""Waterbirds (Sagawa et al. 2020; Waterbirds-100 of Petryk et al. 2022 has the same layout) and a generator of
a Waterbirds-style set.

Layout (the official release): `<root>/metadata.csv` with columns `img_filename` (relative to root), `y`
(0 landbird, 1 waterbird), `split` (0 train, 1 val, 2 test), `place` (0 land, 1 water) and `place_filename`
(the background's source; informative only), optionally `img_id`; images anywhere under root. Group =
2·y + place: 0 landbird on land, 1 landbird on water, 2 waterbird on land, 3 waterbird on water; groups 0 and
3 are "in distribution" (the training correlation), 1 and 2 "out of distribution".

Our addition, for guidance and localisation measures: an optional `<root>/boxes.csv` with columns
`img_filename,x0,y0,x1,y1` (pixels of the stored image, half-open; several rows per image allowed; the box's
class is the image's y). CUB's bounding_boxes.txt converts to it (x0 = x, x1 = x + width, ...).

`generate_waterbirds_style(root, ...)` writes that layout: two object classes (landbird: a triangle,
waterbird: a disc, the same colours), two backgrounds (land: green-brown with vertical grass strokes; water:
blue with horizontal waves), place = y for a `correlation` fraction of training images (0.95 by default;
1.0 = Waterbirds-100), balanced groups in val and test, and each object's box in boxes.csv.
"""
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from kdfast.data.boxes import pad_boxes
from kdfast.data.csv_rows import csv_rows
from kdfast.data.generated import generated_dataset
from kdfast.data.hierarchical import _shape_mask

CLASSES = ("landbird", "waterbird")
PLACES = ("land", "water")
SPLITS = {"train": 0, "val": 1, "test": 2}
GROUP_NAMES = ("landbird_on_land", "landbird_on_water", "waterbird_on_land", "waterbird_on_water")
_REQUIRED = ("img_filename", "y", "split", "place", "place_filename")
_OBJECT_SHAPES = ("triangle", "disc")


def group_of(y, place):
    return 2 * int(y) + int(place)


def _split_code(split):
    if isinstance(split, int) and split in SPLITS.values():
        return split
    if split in SPLITS:
        return SPLITS[split]
    raise ValueError(f"Waterbirds split must be one of {', '.join(SPLITS)} (or 0, 1, 2), got {split!r}")


def _int_field(path, row_number, row, key, allowed):
    value = row.get(key)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number not in allowed:
        raise ValueError(f"{path} row {row_number} ({row.get('img_filename')}): column {key!r} must be one of "
                         f"{sorted(allowed)}, got {value!r}")
    return number


def read_metadata(root):
    """The rows of <root>/metadata.csv as dicts with int y, split, place; every image file must exist."""
    root = Path(root)
    path = root / "metadata.csv"
    if not path.is_file():
        raise FileNotFoundError(f"Waterbirds metadata {path} does not exist (expected the official layout: "
                                f"metadata.csv with {', '.join(_REQUIRED)})")
    rows = []
    for number, row in csv_rows(path, _REQUIRED):
        image = root / row["img_filename"]
        if not image.is_file():
            raise FileNotFoundError(f"{path} row {number}: image {row['img_filename']!r} does not exist ({image})")
        rows.append({
            "img_filename": row["img_filename"],
            "y": _int_field(path, number, row, "y", {0, 1}),
            "split": _int_field(path, number, row, "split", {0, 1, 2}),
            "place": _int_field(path, number, row, "place", {0, 1}),
        })
    return rows


def read_boxes(root, names):
    """{img_filename: [(x0, y0, x1, y1), ...]} from the optional <root>/boxes.csv (empty without it)."""
    path = Path(root) / "boxes.csv"
    if not path.is_file():
        return {}
    boxes = {}
    columns = ("img_filename", "x0", "y0", "x1", "y1")
    for number, row in csv_rows(path, columns):
        if row["img_filename"] not in names:
            raise ValueError(f"{path} row {number}: image {row['img_filename']!r} is not in metadata.csv")
        try:
            box = tuple(int(float(row[c])) for c in columns[1:])
        except ValueError:
            raise ValueError(f"{path} row {number}: coordinates must be numbers, got "
                             f"{[row[c] for c in columns[1:]]}") from None
        boxes.setdefault(row["img_filename"], []).append(box)
    return boxes


class WaterbirdsDataset(Dataset):
    """One split of a Waterbirds folder. Items: {"images", "targets" (y), "groups", "boxes" (M, 5), "indices"};
    `transform` is a kdfast.data.boxes.BoxedTransform. Images without boxes have only padding rows."""

    classes = list(CLASSES)

    def __init__(self, root, split, transform):
        self.root = Path(root)
        code = _split_code(split)
        rows = read_metadata(self.root)
        self.rows = [r for r in rows if r["split"] == code]
        if not self.rows:
            raise ValueError(f"{self.root / 'metadata.csv'}: no images in split {split!r}")
        all_boxes = read_boxes(self.root, {r["img_filename"] for r in rows})
        self.boxes = [all_boxes.get(r["img_filename"], []) for r in self.rows]
        self.max_boxes = max(1, max(len(b) for b in self.boxes))
        self.targets = [r["y"] for r in self.rows]
        self.groups = [group_of(r["y"], r["place"]) for r in self.rows]
        self.transform = transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        with Image.open(self.root / row["img_filename"]) as image:
            tensor, boxes = self.transform(image, [(row["y"], *b) for b in self.boxes[index]])
        return {"images": tensor, "targets": row["y"], "groups": self.groups[index],
                "boxes": pad_boxes(boxes, self.max_boxes), "indices": index}


# ---------------------------------------------------------------------------------------------------------
# The generator


def _background(rng, place, size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if place == 0:  # land: green-brown, vertical grass strokes
        base = np.array([0.35, 0.45, 0.15]) + rng.uniform(-0.08, 0.08, 3)
        phase = rng.uniform(0, 2 * np.pi)
        texture = 0.12 * np.sin(2 * np.pi * rng.uniform(5, 8) * xx + phase) * (0.5 + yy)
    else:  # water: blue, horizontal waves
        base = np.array([0.15, 0.35, 0.65]) + rng.uniform(-0.08, 0.08, 3)
        phase = rng.uniform(0, 2 * np.pi)
        texture = 0.12 * np.sin(2 * np.pi * rng.uniform(4, 7) * yy + 3 * xx + phase)
    image = base[None, None, :] + texture[..., None] + rng.normal(0, 0.03, (size, size, 3))
    return image


def render(rng, y, place, size):
    """(uint8 image (size, size, 3), box (x0, y0, x1, y1)) of class y on background place."""
    image = _background(rng, place, size)
    radius = rng.uniform(0.16, 0.24) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = _shape_mask(_OBJECT_SHAPES[y], yy - cy, xx - cx, radius)
    colour = np.array([0.9, 0.75, 0.2]) + rng.uniform(-0.1, 0.1, 3)
    image[mask] = colour + rng.normal(0, 0.03, (int(mask.sum()), 3))
    rows, cols = np.nonzero(mask)
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), box


def _plan(train_per_class, eval_per_group, correlation, rng):
    """[(split, y, place)] for every image: train places follow y with probability `correlation`."""
    plan = []
    for y in (0, 1):
        majority = round(train_per_class * correlation)
        places = [y] * majority + [1 - y] * (train_per_class - majority)
        plan += [(0, y, p) for p in rng.permutation(places)]
    for split in (1, 2):
        plan += [(split, y, p) for y in (0, 1) for p in (0, 1) for _ in range(eval_per_group)]
    return plan


def generate_waterbirds_style(root=None, train_per_class=100, eval_per_group=25, correlation=0.95, size=64,
                              seed=0):
    """Writes (or finds, when generated before with the same parameters) a Waterbirds-style folder; returns it.
    root None: a folder named by the parameters in the kdfast cache (kdfast.data.generated)."""
    for name, value in (("train_per_class", train_per_class), ("eval_per_group", eval_per_group), ("size", size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if not isinstance(correlation, (int, float)) or not 0.5 <= correlation <= 1:
        raise ValueError(f"correlation must be a fraction in [0.5, 1], got {correlation!r}")
    params = {"train_per_class": train_per_class, "eval_per_group": eval_per_group,
              "correlation": float(correlation), "size": size, "seed": seed}

    def write(folder):
        rng = np.random.default_rng(seed)
        metadata, boxes = [], []
        for index, (split, y, place) in enumerate(_plan(train_per_class, eval_per_group, correlation, rng)):
            image, box = render(rng, y, place, size)
            name = f"{CLASSES[y]}/{index:05d}.png"
            (folder / CLASSES[y]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / name)
            metadata.append({"img_id": index, "img_filename": name, "y": y, "split": split, "place": place,
                             "place_filename": f"/synthetic/{PLACES[place]}/{index:05d}.png"})
            boxes.append({"img_filename": name, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]})
        for filename, rows in (("metadata.csv", metadata), ("boxes.csv", boxes)):
            with open(folder / filename, "w", newline="") as f:
                writer = csv.DictWriter(f, list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        (folder / "params.json").write_text(json.dumps(params, indent=1))

    return generated_dataset(root, params, write, "waterbirds_style")
