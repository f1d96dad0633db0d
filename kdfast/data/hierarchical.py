"""A generated image-classification dataset whose classes form a hierarchy, so that class similarity exists.

Each superclass is a shape in its own hue family (e.g. red discs, green squares, blue triangles); its
subclasses are the same shape and colour family, told apart only by a faint surface pattern (plain,
horizontal stripes, vertical stripes, checker, dots). Telling superclasses apart is easy, telling siblings apart is
not, so a trained teacher's soft labels put their mass on the siblings of the true class: the "dark knowledge"
that KD transfers. Objects vary in position, size and shade; backgrounds are smooth noise with an occasional
distractor blob.

The dataset is written as an ImageFolder tree (`train/<class>/*.png`, `val/<class>/*.png`, classes named
`<shape>_<pattern>` so that sorting them groups siblings) plus `categories.csv` (`index,class,category`:
the superclass of each class index, readable by kdfast.data.categories) and `params.json`. Generation is
deterministic for a seed.
"""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kdfast.data.generated import cache_root, generated_dataset  # noqa: F401  (cache_root: used by voc, waterbirds)

SHAPES = ("disc", "square", "triangle", "diamond", "cross", "ring")
# Patterns are symmetric under horizontal flips, so flip augmentation keeps every image in its class.
PATTERNS = ("plain", "hstripes", "vstripes", "checker", "dots")


def class_names(superclasses, subclasses):
    """[(class name, superclass name)] in ImageFolder (sorted) order."""
    if not 1 <= superclasses <= len(SHAPES):
        raise ValueError(f"superclasses must be in 1..{len(SHAPES)}, got {superclasses}")
    if not 2 <= subclasses <= len(PATTERNS):
        raise ValueError(f"subclasses must be in 2..{len(PATTERNS)}, got {subclasses}")
    return sorted((_class_name(s, j), SHAPES[s]) for s in range(superclasses) for j in range(subclasses))


def _class_name(superclass, sub):
    return f"{SHAPES[superclass]}_{PATTERNS[sub]}"


def _shape_mask(shape, yy, xx, radius):
    """Boolean mask of a shape centred at the origin of the (yy, xx) grid."""
    ay, ax = np.abs(yy), np.abs(xx)
    if shape == "disc":
        return yy**2 + xx**2 <= radius**2
    if shape == "square":
        return np.maximum(ay, ax) <= radius * 0.85
    if shape == "triangle":
        return (yy <= radius * 0.7) & (yy >= 1.7 * ax - radius)
    if shape == "diamond":
        return ay + ax <= radius * 1.1
    if shape == "cross":
        arm = radius * 0.35
        return ((ay <= arm) & (ax <= radius)) | ((ax <= arm) & (ay <= radius))
    if shape == "ring":
        r2 = yy**2 + xx**2
        return (r2 <= radius**2) & (r2 >= (0.5 * radius) ** 2)
    raise ValueError(f"unknown shape {shape}")


def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def render(rng, superclass, sub, superclasses, size):
    """One uint8 (size, size, 3) image of class (superclass, sub)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: a smooth random gradient plus pixel noise.
    corners = rng.uniform(0.1, 0.6, size=(2, 2, 3))
    wy, wx = (yy / (size - 1))[..., None], (xx / (size - 1))[..., None]
    image = (1 - wy) * ((1 - wx) * corners[0, 0] + wx * corners[0, 1]) + wy * (
        (1 - wx) * corners[1, 0] + wx * corners[1, 1]
    )
    if rng.random() < 0.5:  # a distractor blob of any colour
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(0.08, 0.15) * size]
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image[blob] = rng.uniform(0, 1, 3)
    # The object: its superclass's shape in its superclass's hue family, shade and size jittered.
    radius = rng.uniform(0.25, 0.38) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    mask = _shape_mask(SHAPES[superclass], yy - cy, xx - cx, radius)
    hue = (superclass / superclasses + rng.normal(0, 0.03)) % 1.0
    colour = np.array(_hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.6, 1.0)), dtype=np.float32)
    # The subclass: a faint surface pattern (jittered orientation, period, phase and contrast).
    theta = np.deg2rad(rng.normal(0, 8))
    period = rng.uniform(3.5, 5.5) * size / 32
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = (yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta)
    u, v = [2 * np.pi * w / period + rng.uniform(0, 2 * np.pi) for w in (u, v)]
    on = {
        "plain": np.zeros_like(u, dtype=bool),
        "hstripes": np.sin(v) > 0,
        "vstripes": np.sin(u) > 0,
        "checker": (np.sin(u) > 0) ^ (np.sin(v) > 0),
        "dots": (np.cos(u) > 0.5) & (np.cos(v) > 0.5),
    }[PATTERNS[sub]]
    stripes = 1 - rng.uniform(0.2, 0.5) * on
    image[mask] = colour * stripes[mask][:, None]
    image += rng.normal(0, 0.04, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _params(superclasses, subclasses, train_per_class, val_per_class, size, seed):
    """The generation parameters, as written to params.json and compared on reuse."""
    return dict(
        superclasses=superclasses,
        subclasses=subclasses,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        size=size,
        seed=seed,
    )


def generate(out, superclasses=3, subclasses=4, train_per_class=100, val_per_class=25, size=32, seed=0, progress=True):
    """Writes the dataset to `out` (which must not exist yet) and returns it as a Path."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; generate into a new folder")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    names = class_names(superclasses, subclasses)
    index = {name: k for k, (name, _) in enumerate(names)}
    rng = np.random.default_rng(seed)
    jobs = [
        (split, s, j)
        for split, count in (("train", train_per_class), ("val", val_per_class))
        for s in range(superclasses)
        for j in range(subclasses)
        for _ in range(count)
    ]
    counters = {}
    for split, s, j in tqdm(jobs, desc="generating hierarchical dataset", disable=not progress):
        name = _class_name(s, j)
        folder = out / split / name
        n = counters.get((split, name), 0)
        if n == 0:
            folder.mkdir(parents=True)
        counters[(split, name)] = n + 1
        Image.fromarray(render(rng, s, j, superclasses, size)).save(folder / f"{n:05d}.png")
    with open(out / "categories.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "class", "category"])
        for name, superclass in names:
            writer.writerow([index[name], name, superclass])
    params = _params(superclasses, subclasses, train_per_class, val_per_class, size, seed)
    (out / "params.json").write_text(json.dumps(params, indent=1))
    return out


def hierarchical_dataset(
    root=None, superclasses=3, subclasses=4, train_per_class=100, val_per_class=25, size=32, seed=0, progress=True
):
    """The dataset's folder, generated on first use.

    root=None keeps it in the cache (`cache_root()/hierarchical-...`, one folder per parameter set). An
    existing folder is reused when its params.json matches, and is an error otherwise. Generation goes to a
    temporary folder that is renamed when complete, so an interrupted run never leaves a partial dataset."""
    params = _params(superclasses, subclasses, train_per_class, val_per_class, size, seed)
    return generated_dataset(root, params, lambda out: generate(out, progress=progress, **params), "hierarchical")
