"""Tjoa–Guan-style synthetic shapes with ternary ground-truth heatmaps (Tjoa & Guan 2020; ICML 2023 §5.1, App. D).

Ten classes in three families, so that classes of one family are similar: circles (plain, + bar, + bar and
pole), rectangles (red, green, blue border), tailed circles (1, 3, 8 tails), and an empty class. Every image has
one of three backgrounds (black, smooth blotches, ripples). The ground truth marks each pixel 0 (background),
1 (localisation: the object) or 2 (the distinguishing feature: what tells the class apart from its family).

Geometry on the paper's 512-pixel canvas, scaled to any size: radius U[90, 110], border width U[10, 30],
vertical stretch U[0.5, 1.5], rotation U[−60°, 60°], centre within ±0.33·size of the middle; border colour
U[0.5, 0.9] per channel; inner colour R, G ~ U[0.1, 0.3], B ~ U[0.3, 0.5].

On disk: `<root>/<split>/<index>.png` (RGB), `<index>_gt.png` (one channel, values 0/1/2) and `labels.csv`
(`file,gt_file,label,class_name,background`), plus `<root>/meta.json`.
"""

import csv
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

CLASSES = (
    "circle",
    "circle_bar",
    "circle_bar_pole",
    "rectangle_red",
    "rectangle_green",
    "rectangle_blue",
    "tailed_1",
    "tailed_3",
    "tailed_8",
    "empty",
)
EMPTY_CLASS = 9
# The class hierarchy; the empty class belongs to no family.
FAMILIES = {"circle": [0, 1, 2], "rectangle": [3, 4, 5], "tailed": [6, 7, 8]}
BACKGROUNDS = ("black", "blotches", "ripples")
REFERENCE_SIZE = 512
TAILS = {6: 1, 7: 3, 8: 8}
SPLITS = ("train", "test")
DEFAULT_COUNTS = {"train": 6400, "test": 1600}
BACKGROUND_MAX = 0.35  # backgrounds stay darker than the shapes' borders (≥ 0.5 in their brightest channel)


@dataclass(frozen=True)
class Geometry:
    """Parameter ranges on the 512-pixel reference canvas (lengths are scaled by size / 512)."""

    radius: tuple = (90.0, 110.0)
    border: tuple = (10.0, 30.0)
    stretch: tuple = (0.5, 1.5)
    rotation_deg: tuple = (-60.0, 60.0)
    offset: float = 0.33
    border_colour: tuple = (0.5, 0.9)
    inner_rg: tuple = (0.1, 0.3)
    inner_b: tuple = (0.3, 0.5)
    rectangle_aspect: float = 0.75  # half-height / half-width of the rectangles before the stretch
    tail_length: float = 0.7  # tails reach this many radii beyond the circle
    pole_length: float = 0.6  # the pole sticks out this many radii above the circle


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    ground_truth: np.ndarray  # (H, W) uint8 in {0, 1, 2}
    label: int
    background: str
    border_colour: np.ndarray = field(default=None)
    inner_colour: np.ndarray = field(default=None)


def _background(kind, size, rng):
    if kind == "black":
        return np.zeros((size, size, 3), np.float32)
    if kind == "blotches":
        coarse = torch.from_numpy(rng.uniform(0, BACKGROUND_MAX, (1, 3, 4, 4)).astype(np.float32))
        smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        return smooth[0].permute(1, 2, 0).clamp(0, BACKGROUND_MAX).numpy()
    if kind == "ripples":
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        cx, cy = rng.uniform(0, 1, 2)
        cycles, phase = rng.uniform(4, 12), rng.uniform(0, 2 * math.pi)
        wave = 0.5 * (1 + np.sin(2 * math.pi * cycles * np.hypot(x - cx, y - cy) + phase))
        tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        return (BACKGROUND_MAX * wave[..., None] * tint).astype(np.float32)
    raise ValueError(f"unknown background '{kind}'; choose from {BACKGROUNDS}")


def _border_colour(label, rng, geometry):
    if label in (3, 4, 5):  # rectangles: the border's dominant channel names the class
        colour = rng.uniform(0.0, 0.2, 3)
        colour[label - 3] = rng.uniform(*geometry.border_colour)
        return colour.astype(np.float32)
    return rng.uniform(*geometry.border_colour, 3).astype(np.float32)


def render_sample(label, size, rng, geometry=Geometry(), background=None):
    """One image of class `label` (0–9) on a size×size canvas, drawn with numpy Generator `rng`."""
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be 0..{len(CLASSES) - 1}, got {label}")
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    background = background or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    image = _background(background, size, rng)
    truth = np.zeros((size, size), np.uint8)
    sample = Sample(image, truth, label, background)
    if label == EMPTY_CLASS:
        return sample
    scale = size / REFERENCE_SIZE
    r = rng.uniform(*geometry.radius) * scale
    b = rng.uniform(*geometry.border) * scale
    stretch = rng.uniform(*geometry.stretch)
    theta = math.radians(rng.uniform(*geometry.rotation_deg))
    cx, cy = size / 2 + rng.uniform(-geometry.offset, geometry.offset, 2) * size
    border = _border_colour(label, rng, geometry)
    inner = np.array(
        [rng.uniform(*geometry.inner_rg), rng.uniform(*geometry.inner_rg), rng.uniform(*geometry.inner_b)], np.float32
    )
    sample.border_colour, sample.inner_colour = border, inner

    # Pixel centres in the shape's own frame: undo the rotation, then the vertical stretch.
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    u = math.cos(theta) * dx + math.sin(theta) * dy
    v = (-math.sin(theta) * dx + math.cos(theta) * dy) / stretch

    if label in (3, 4, 5):
        half_w, half_h = r, geometry.rectangle_aspect * r
        body = (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
        interior = (np.abs(u) <= half_w - b) & (np.abs(v) <= half_h - b)
        features = body & ~interior
        outline = np.zeros_like(body)
    else:
        rho = np.hypot(u, v)
        body = rho <= r
        interior = rho <= r - b
        outline = body & ~interior  # the circle's border ring
        features = np.zeros_like(body)
        if label == 0:
            features = outline
        if label in (1, 2):
            features = features | ((np.abs(v) <= b / 2) & (np.abs(u) <= r - b))
        if label == 2:
            features = features | ((np.abs(u) <= b / 2) & (v <= 0) & (v >= -(1 + geometry.pole_length) * r))
        if label in TAILS:
            phase = rng.uniform(0, 2 * math.pi)
            for j in range(TAILS[label]):
                phi = phase + 2 * math.pi * j / TAILS[label]
                along = u * math.cos(phi) + v * math.sin(phi)
                across = -u * math.sin(phi) + v * math.cos(phi)
                features = features | (
                    (along >= r) & (along <= (1 + geometry.tail_length) * r) & (np.abs(across) <= b / 2)
                )
    obj = body | features
    image[interior] = inner
    image[outline | features] = border
    truth[obj] = 1
    truth[features] = 2
    return sample


def sample_rng(seed, split, index):
    """The generator of one sample: independent of the order (and process) in which samples are drawn."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def split_labels(count, seed, split):
    """Balanced labels (count // 10 per class, the remainder to the first classes), in seeded random order."""
    labels = np.arange(count) % len(CLASSES)
    np.random.default_rng([seed, SPLITS.index(split), 2**31]).shuffle(labels)
    return labels


def _write_one(job):
    root, split, index, label, size, seed = job
    sample = render_sample(int(label), size, sample_rng(seed, split, index))
    name = f"{index:05d}"
    Image.fromarray(np.round(sample.image * 255).astype(np.uint8)).save(root / split / f"{name}.png")
    Image.fromarray(sample.ground_truth).save(root / split / f"{name}_gt.png")
    return [f"{name}.png", f"{name}_gt.png", int(label), CLASSES[label], sample.background]


def make_synthetic_shapes(root, counts=None, size=REFERENCE_SIZE, seed=0, workers=1):
    """Writes the dataset under `root` (train/ and test/ with labels.csv, and meta.json); returns root."""
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"sample counts must be ≥ 0, got {counts}")
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    root = Path(root)
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        jobs = [(root, split, i, label, size, seed) for i, label in enumerate(split_labels(count, seed, split))]
        desc = f"synthetic shapes {split}"
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                rows = list(tqdm(pool.map(_write_one, jobs, chunksize=32), total=len(jobs), desc=desc))
        else:
            rows = [_write_one(job) for job in tqdm(jobs, desc=desc)]
        with open(root / split / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "gt_file", "label", "class_name", "background"])
            writer.writerows(rows)
    meta = {
        "dataset": "synthetic_shapes",
        "size": size,
        "seed": seed,
        "counts": counts,
        "classes": list(CLASSES),
        "families": FAMILIES,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return root


def object_boxes(ground_truth):
    """Per image, [(x0, y0, x1, y1)] around the object (ground truth > 0), x1/y1 exclusive; [] when empty."""
    boxes = []
    for truth in ground_truth:
        ys, xs = torch.nonzero(truth > 0, as_tuple=True)
        boxes.append([] if ys.numel() == 0 else [(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)])
    return boxes


class SyntheticShapes(torch.utils.data.Dataset):
    """One split of a generated dataset: (image float (3, H, W) in [0, 1], label, ground truth int64 (H, W)).

    With `image_size`, images are resized (bilinear, antialiased) and ground truths follow (nearest)."""

    def __init__(self, root, split="test", image_size=None):
        self.root, self.split, self.image_size = Path(root), split, image_size
        table = self.root / split / "labels.csv"
        if not table.is_file():
            raise FileNotFoundError(
                f"{table} does not exist; generate the data with "
                f"`python scripts/make_synthetic_shapes.py --out {self.root}`"
            )
        with open(table, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"file", "gt_file", "label"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{table}: missing column(s) {sorted(missing)}")
            self.rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    label = int(row["label"])
                except ValueError:
                    raise ValueError(f"{table} line {line}: label '{row['label']}' is not an integer") from None
                if not 0 <= label < len(CLASSES):
                    raise ValueError(f"{table} line {line}: label {label} is not a class 0..{len(CLASSES) - 1}")
                self.rows.append((row["file"], row["gt_file"], label))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        file, gt_file, label = self.rows[index]
        folder = self.root / self.split
        image = torch.from_numpy(np.asarray(Image.open(folder / file).convert("RGB"), np.float32) / 255)
        truth_image = Image.open(folder / gt_file)
        if truth_image.mode not in ("L", "P") or truth_image.size != image.shape[1::-1]:
            raise ValueError(
                f"{folder / gt_file}: expected a one-channel {image.shape[1]}×{image.shape[0]} map, "
                f"got mode {truth_image.mode} size {truth_image.size[0]}×{truth_image.size[1]}"
            )
        truth = torch.from_numpy(np.asarray(truth_image, np.int64).copy())
        if int(truth.max()) > 2:
            raise ValueError(f"{folder / gt_file}: ground truth values must be 0, 1, 2, found {int(truth.max())}")
        image = image.permute(2, 0, 1)
        if self.image_size is not None and self.image_size != image.shape[-1]:
            size = (self.image_size, self.image_size)
            image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            truth = F.interpolate(truth[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return image.clamp(0, 1), label, truth

    def load_all(self):
        """(images (N, 3, H, W), labels (N,), ground truths (N, H, W)) held in memory."""
        items = [
            self[i] for i in tqdm(range(len(self)), desc=f"loading {self.split}", leave=False, disable=len(self) < 500)
        ]
        if not items:
            raise ValueError(f"{self.root / self.split} holds no samples")
        images, labels, truths = zip(*items)
        return torch.stack(images), torch.tensor(labels), torch.stack(truths)
