"""A synthetic Broden with known concepts, written in exactly the `broden1_224` on-disk format.

Every image is either
* an object image: a scene (image-level label) drawn as a distinctive solid background with mild noise, and 1-3
  shapes (object) at random places and sizes, each filled with a palette colour (color), split into top/bottom
  halves (part, `<base>_part_1.png`; for some images also an `edge` band in `<base>_part_2.png`), some filled with
  a pattern (material); later shapes occlude earlier ones and the label planes show what is visible; or
* a texture image (TEXTURE_FRACTION of them): the whole image is a two-colour pattern, with only a texture label.

The color plane labels object pixels only (background = 0, unlabeled). The patterns "striped" and "dotted" are both
a material (inside a shape) and a texture (whole image), so those labels belong to two categories in label.csv.
Image i is drawn from its own generator seeded with (seed, i): the first k images are the same for any image count.
"""

import csv
import functools
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kdfast.data import generated
from kdfast.data.broden import CATEGORY_HEADER, CATEGORY_LABEL_HEADER, INDEX_META_COLUMNS, LABEL_HEADER

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
COLOR_PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 50),
    "purple": (150, 60, 190),
}
SCENE_BACKGROUNDS = {
    "desert": (205, 175, 125),
    "forest": (45, 95, 50),
    "ocean": (30, 110, 150),
    "night": (25, 25, 45),
}
OBJECT_SHAPES = ("circle", "square", "triangle", "ring")
PARTS = ("top", "bottom", "edge")  # top/bottom halves on part plane 1, the edge band on part plane 2
MATERIALS = ("striped", "dotted")
TEXTURES = ("striped", "dotted", "checkered")

TEXTURE_FRACTION = 0.15
MATERIAL_FRACTION = 0.35  # of the shapes
EDGE_PART_FRACTION = 0.5  # of the object images
VAL_FRACTION = 0.2
NOISE_STD = 6.0  # grey levels
PATTERN_SHADE = 0.5  # a material's pattern is the fill colour darkened by this factor

DEFAULT_IMAGES, DEFAULT_SIZE, DEFAULT_SEED = 200, 224, 0
SYNTHETIC_VERSION = 2  # part of default_broden's folder name: bump when the drawing changes


def label_table(members, categories=CATEGORIES):
    """Global label names (index = number, 0 = unlabeled) and the categories of each, from the names of each
    category in `categories` order; a name used by two categories is one label."""
    names, label_categories = ["-"], [[]]
    for category, names_in_category in zip(categories, members, strict=True):
        for name in names_in_category:
            if name in names:
                label_categories[names.index(name)].append(category)
            else:
                names.append(name)
                label_categories.append([category])
    return names, label_categories


LABEL_NAMES, LABEL_CATEGORIES = label_table(
    (COLOR_PALETTE, OBJECT_SHAPES, PARTS, MATERIALS, SCENE_BACKGROUNDS, TEXTURES))
LABEL_NUMBER = {name: number for number, name in enumerate(LABEL_NAMES) if number}


def _pixel_centres(n):
    """Row and column coordinates of the pixel centres of an n x n grid on the unit square."""
    c = (np.arange(n) + 0.5) / n
    return c[:, None], c[None, :]


def _shape_mask(shape, cx, cy, r, y, x):
    dy, dx = y - cy, x - cx
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":  # apex up
        return (dy >= -r) & (dy <= 0.7 * r) & (np.abs(dx) <= 0.6 * (dy + r))
    raise ValueError(f"unknown shape {shape!r}")


def _owner(objects, n):
    """(n, n) int: 1 + index of the object visible at each pixel (later objects on top), 0 = background.
    Shapes live on the unit square, so the image and its half-size segmentation agree."""
    y, x = _pixel_centres(n)
    owner = np.zeros((n, n), dtype=np.int64)
    for k, obj in enumerate(objects):
        owner[_shape_mask(obj["shape"], obj["cx"], obj["cy"], obj["r"], y, x)] = k + 1
    return owner


@functools.lru_cache(maxsize=32)
def texture_pattern(name, n, period):
    """(n, n) bool: where a two-colour pattern puts its second colour, in image pixels (cached: the same for every
    image). Shared with kdfast.data.synthetic_world's texture images."""
    y, x = np.mgrid[0:n, 0:n]
    if name == "striped":
        return (y // (period // 2)) % 2 == 1
    if name == "dotted":
        return (y % period - period / 2) ** 2 + (x % period - period / 2) ** 2 <= (period / 4) ** 2
    if name == "checkered":
        return (y // period + x // period) % 2 == 1
    if name == "zigzag":
        return ((y + np.abs((x % period) - period / 2)) // (period // 2)) % 2 == 1
    raise ValueError(f"unknown pattern {name!r}")


def _pattern(name, n):
    return texture_pattern(name, n, max(n // 10, 4))


def _noisy(image, rng):
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(NOISE_STD)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _texture_sample(rng, size):
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    colours = np.array(list(COLOR_PALETTE.values()), dtype=np.float32)
    first, second = rng.choice(len(colours), 2, replace=False)
    image = np.where(_pattern(texture, size)[..., None], colours[second], colours[first])
    return _noisy(image, rng), {}, {"texture": [LABEL_NUMBER[texture]]}


def _object_sample(rng, size):
    scene = list(SCENE_BACKGROUNDS)[rng.integers(len(SCENE_BACKGROUNDS))]
    objects = []
    for _ in range(rng.integers(1, 4)):
        objects.append(
            {
                "shape": OBJECT_SHAPES[rng.integers(len(OBJECT_SHAPES))],
                "color": list(COLOR_PALETTE)[rng.integers(len(COLOR_PALETTE))],
                "material": MATERIALS[rng.integers(len(MATERIALS))] if rng.random() < MATERIAL_FRACTION else None,
                "cx": rng.uniform(0.15, 0.85),
                "cy": rng.uniform(0.15, 0.85),
                "r": rng.uniform(0.1, 0.22),
            }
        )
    with_edges = rng.random() < EDGE_PART_FRACTION

    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = SCENE_BACKGROUNDS[scene]
    owner = _owner(objects, size)
    for k, obj in enumerate(objects):
        fill = np.array(COLOR_PALETTE[obj["color"]], dtype=np.float32)
        inside = owner == k + 1
        image[inside] = fill
        if obj["material"] is not None:
            image[inside & _pattern(obj["material"], size)] = fill * PATTERN_SHADE

    seg = size // 2
    owner = _owner(objects, seg)

    def plane(attribute):
        lookup = np.array([0] + [LABEL_NUMBER[obj[attribute]] if obj[attribute] else 0 for obj in objects])
        return lookup[owner]

    y, _ = _pixel_centres(seg)
    centre_y = np.array([0.0] + [obj["cy"] for obj in objects])[owner]
    halves = np.where(y < centre_y, LABEL_NUMBER["top"], LABEL_NUMBER["bottom"]) * (owner > 0)
    planes = {"color": [plane("color")], "object": [plane("shape")], "part": [halves]}
    if with_edges:
        padded = np.pad(owner, 1)  # the image border counts as background
        boundary = (
            (padded[:-2, 1:-1] != owner)
            | (padded[2:, 1:-1] != owner)
            | (padded[1:-1, :-2] != owner)
            | (padded[1:-1, 2:] != owner)
        )
        planes["part"].append(np.where(boundary & (owner > 0), LABEL_NUMBER["edge"], 0))
    material = plane("material")
    if material.any():
        planes["material"] = [material]
    return _noisy(image, rng), planes, {"scene": [LABEL_NUMBER[scene]]}


def synthetic_sample(index, size=224, seed=0):
    """(uint8 image (size, size, 3), {pixel category: [label planes (size/2, size/2)]},
    {image-level category: [label numbers]}, split) of synthetic image `index`."""
    rng = np.random.default_rng([seed, index])
    split = "val" if rng.random() < VAL_FRACTION else "train"
    if rng.random() < TEXTURE_FRACTION:
        return _texture_sample(rng, size) + (split,)
    return _object_sample(rng, size) + (split,)


def _label_png(plane):
    """Broden's PNG label encoding: label = R + 256·G, B unused."""
    rgb = np.zeros(plane.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = plane % 256
    rgb[..., 1] = plane // 256
    return Image.fromarray(rgb)


class _LabelStats:
    """Per label and category: images it occurs in and its coverage (summed fraction of image pixels)."""

    def __init__(self, label_count, categories):
        self.categories = tuple(categories)
        self.images = np.zeros((label_count, len(categories)), dtype=np.int64)
        self.coverage = np.zeros((label_count, len(categories)), dtype=np.float64)
        self.any_category_images = np.zeros(label_count, dtype=np.int64)
        self.category_images = np.zeros(len(categories), dtype=np.int64)

    def add(self, planes, image_labels):
        label_count = len(self.any_category_images)
        seen = np.zeros((label_count, len(self.categories)), dtype=bool)
        for category, category_planes in planes.items():
            c = self.categories.index(category)
            pixels = np.concatenate([p.ravel() for p in category_planes])
            counts = np.bincount(pixels, minlength=label_count)
            counts[0] = 0
            seen[:, c] |= counts > 0
            self.coverage[:, c] += counts / category_planes[0].size
        for category, labels in image_labels.items():
            c = self.categories.index(category)
            seen[labels, c] = True
            self.coverage[labels, c] += 1.0
        self.images += seen
        self.any_category_images += seen.any(axis=1)
        self.category_images += seen.any(axis=0)


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_label_files(out, stats, label_names, label_categories):
    categories = stats.categories
    members = {c: [n for n in range(1, len(label_names)) if c in label_categories[n]] for c in categories}
    _write_csv(
        out / "category.csv",
        CATEGORY_HEADER,
        [
            (c, min(members[c]), max(members[c]), len(members[c]), stats.category_images[k])
            for k, c in enumerate(categories)
        ],
    )
    label_rows = []
    for n in range(1, len(label_names)):
        field = ";".join(f"{c}({stats.images[n, categories.index(c)]})" for c in label_categories[n])
        coverage = stats.coverage[n].sum()
        label_rows.append((n, label_names[n], field, stats.any_category_images[n], f"{coverage:.6f}", ""))
    _write_csv(out / "label.csv", LABEL_HEADER, label_rows)
    for k, c in enumerate(categories):
        rows = [
            (code, n, label_names[n], stats.images[n, k], f"{stats.coverage[n, k]:.6f}")
            for code, n in enumerate(members[c], start=1)
        ]
        _write_csv(out / f"c_{c}.csv", CATEGORY_LABEL_HEADER, rows)


def write_broden(out, sample, images, size, label_names, label_categories, categories=CATEGORIES, progress=True,
                 desc="synthetic Broden"):
    """Writes `images` samples into the new or empty folder `out` in the broden1_224 layout and returns its path.

    `sample(i)` gives (uint8 image (size, size, 3), {pixel category: [label planes (size/2, size/2)]},
    {image-level category: [label numbers]}, split); `label_names[n]` / `label_categories[n]` name global label
    n (0 = unlabeled) and its categories. Used by this module's shapes and by kdfast.data.synthetic_world."""
    if int(images) < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    if int(size) < 16 or int(size) % 2:
        raise ValueError(f"size must be an even number >= 16 (segmentations are size/2), got {size}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; pick a new --out")
    folder = "synthetic"
    (out / "images" / folder).mkdir(parents=True, exist_ok=True)
    seg = size // 2
    stats = _LabelStats(len(label_names), categories)
    # index.csv appears last, renamed into place, so an interrupted write never looks like a finished Broden.
    with open(out / "index.csv.partial", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(INDEX_META_COLUMNS + tuple(categories))
        for i in tqdm(range(images), disable=not progress, desc=desc, unit="img"):
            image, planes, image_labels, split = sample(i)
            base = f"{folder}/syn_{i:06d}"
            Image.fromarray(image).save(out / "images" / f"{base}.jpg", quality=90)
            cells = {}
            for category, category_planes in planes.items():
                names = [f"{base}_{category}.png"]
                if category == "part":
                    names = [f"{base}_part_{k}.png" for k in range(1, len(category_planes) + 1)]
                for name, label_plane in zip(names, category_planes, strict=True):
                    _label_png(label_plane).save(out / "images" / name)
                cells[category] = ";".join(names)
            for category, labels in image_labels.items():
                cells[category] = ";".join(map(str, labels))
            writer.writerow([f"{base}.jpg", split, size, size, seg, seg] + [cells.get(c, "") for c in categories])
            stats.add(planes, image_labels)
    _write_label_files(out, stats, label_names, label_categories)
    (out / "index.csv.partial").replace(out / "index.csv")
    return out


def synthetic_broden(out, images=64, size=224, seed=0, progress=True):
    """Writes a synthetic Broden with `images` images (JPEG, size x size; PNG segmentations at size/2) into the
    new or empty folder `out` and returns its path. Deterministic for a seed."""
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return write_broden(out, lambda i: synthetic_sample(i, size, seed), images, size, LABEL_NAMES, LABEL_CATEGORIES,
                        progress=progress)


def default_broden(cache_root=None):
    """Path of the embedded default dataset (DEFAULT_IMAGES synthetic images at DEFAULT_SIZE, DEFAULT_SEED), built
    once under `cache_root`, else $KDFAST_CACHE, else ~/.cache/kdfast."""
    path = generated.cache_root(cache_root) / (
        f"synthetic_broden_n{DEFAULT_IMAGES}_s{DEFAULT_SIZE}_seed{DEFAULT_SEED}_v{SYNTHETIC_VERSION}")
    return generated.build_atomically(
        path, lambda out: synthetic_broden(out, DEFAULT_IMAGES, DEFAULT_SIZE, DEFAULT_SEED))
    root.mkdir(parents=True, exist_ok=True)
    # Built beside its final place and renamed in one step, so an interrupted build never looks finished.
    building = root / f".building-{path.name}-{os.getpid()}-{uuid.uuid4().hex}"
    building.mkdir()
    try:
        synthetic_broden(building, DEFAULT_IMAGES, DEFAULT_SIZE, DEFAULT_SEED)
        try:
            os.rename(building, path)
        except OSError:
            if not path.is_dir():  # otherwise a concurrent build finished first: use that one
                raise
    finally:
        if building.exists():
            shutil.rmtree(building)
    return path
