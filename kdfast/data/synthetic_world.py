"""One synthetic world for the embedded default: classification images and the matching synthetic Broden are
drawn by one renderer from one concept vocabulary.

A scene is a background (an image-level *scene*: street, field, beach, room, night; its sky/ground regions are
*objects* such as sky, road, grass) and one object of a class. Every class belongs to a superclass that fixes
the body and the common parts (a vehicle is a box on wheels, an animal an ellipse with a head and legs, a
building a block with a roof and a door); the classes of one superclass differ by their *material* (a surface
pattern: metal, wood, fur, brick, ...) and one distinctive *part* (a car's window, a cat's ears, a house's
chimney). Body colours are drawn from a palette independently of the class, so *colour* is a concept of its own
and not a class cue. Siblings therefore share most of what is visible and a teacher's soft labels put their mass
on them: the class similarity KD transfers.

The renderer draws a scene into an image and, from the same geometry, its per-pixel label planes (object,
part, material, colour) at half resolution; classification images keep only the class (the object's class
index), Broden images keep the planes (kdfast.data.synthetic_broden.write_broden writes the real broden1_224
layout). Broden also gets whole-image *texture* images (striped, dotted, checkered, zigzag). Everything is
deterministic for a seed: each image comes from its own generator seeded with (seed, split, [class,] i).
"""
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kdfast.data.generated import build_atomically, cache_root, generated_dataset
from kdfast.data.synthetic_broden import CATEGORIES, label_table, texture_pattern, write_broden

# Superclass → [(class, material)], the class's distinctive part is drawn by _CLASS_PARTS.
SUPERCLASSES = {
    "vehicle": [("car", "metal"), ("bus", "metal"), ("truck", "metal"), ("cart", "wood")],
    "animal": [("dog", "fur"), ("cat", "fur"), ("cow", "hide"), ("sheep", "wool")],
    "building": [("house", "brick"), ("tower", "stone"), ("barn", "wood"), ("shop", "brick")],
}
PALETTE = {
    "red": (205, 45, 40), "orange": (235, 130, 35), "yellow": (235, 210, 55), "green": (60, 160, 70),
    "blue": (45, 80, 200), "purple": (135, 60, 170), "brown": (120, 75, 40), "grey": (128, 128, 128),
    "white": (235, 235, 230), "black": (30, 30, 32),
}
BODY_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "grey", "white")
# scene → (sky object, sky rgb, ground object, ground rgb)
SCENES = {
    "street": ("sky", (150, 195, 235), "road", (85, 85, 90)),
    "field": ("sky", (150, 195, 235), "grass", (95, 150, 60)),
    "beach": ("sky", (150, 195, 235), "sand", (215, 190, 140)),
    "room": ("wall", (215, 200, 170), "floor", (140, 100, 70)),
    "night": ("sky", (25, 30, 60), "grass", (30, 55, 30)),
}
MATERIALS = ("metal", "wood", "fur", "hide", "wool", "brick", "stone", "glass", "rubber", "fabric")
PARTS = ("wheel", "window", "cab", "handle", "head", "leg", "tail", "ear", "horn", "roof", "door", "chimney",
         "awning")
TEXTURES = ("striped", "dotted", "checkered", "zigzag")
TEXTURE_FRACTION = 0.1  # of the Broden images
VAL_FRACTION = 0.2  # of the Broden images
NOISE_STD = 5.0  # grey levels

DEFAULT_SIZE = 48
WORLD_BRODEN_IMAGES = 300
WORLD_VERSION = 1  # part of the cached folders' names: bump when the drawing changes


def class_names(superclasses=3, subclasses=4):
    """[(class, superclass)] of a world with the first `superclasses` superclasses and `subclasses` classes each,
    in ImageFolder (sorted) order."""
    if not 1 <= superclasses <= len(SUPERCLASSES):
        raise ValueError(f"superclasses must be in 1..{len(SUPERCLASSES)}, got {superclasses}")
    if not 2 <= subclasses <= 4:
        raise ValueError(f"subclasses must be in 2..4, got {subclasses}")
    return sorted((name, sup) for sup in list(SUPERCLASSES)[:superclasses]
                  for name, _ in SUPERCLASSES[sup][:subclasses])


_OBJECTS = sorted({n for classes in SUPERCLASSES.values() for n, _ in classes}
                  | {s[0] for s in SCENES.values()} | {s[2] for s in SCENES.values()})
LABEL_NAMES, LABEL_CATEGORIES = label_table((tuple(PALETTE), _OBJECTS, PARTS, MATERIALS, tuple(SCENES), TEXTURES))
LABEL_NUMBER = {name: number for number, name in enumerate(LABEL_NAMES) if number}


# ---------------------------------------------------------------------------------------------------------
# Geometry: regions are (mask function of unit-square pixel centres, labels, rgb, material), drawn in order.


def _rect(cx, cy, hw, hh):
    return lambda y, x: (np.abs(x - cx) <= hw) & (np.abs(y - cy) <= hh)


def _ellipse(cx, cy, rx, ry):
    return lambda y, x: ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1


def _triangle(cx, top, bottom, hw):
    """Apex up at (cx, top), base from cx - hw to cx + hw at `bottom`."""
    return lambda y, x: (y >= top) & (y <= bottom) & (np.abs(x - cx) <= hw * (y - top) / (bottom - top))


def _region(mask, part, material, colour):
    return {"mask": mask, "part": part, "material": material, "colour": colour}


def _vehicle(name, material, colour, cx, cy, s, d, rng):
    hh = 0.22 * s if name == "bus" else 0.15 * s
    regions = [_region(_rect(cx, cy, 0.42 * s, hh), None, material, colour)]
    if name == "car":
        regions.append(_region(_rect(cx, cy - hh - 0.08 * s, 0.2 * s, 0.08 * s), "window", "glass", "white"))
    elif name == "bus":
        for k in (-1, 0, 1):
            regions.append(_region(_rect(cx + k * 0.25 * s, cy - 0.08 * s, 0.09 * s, 0.07 * s), "window", "glass",
                                   "white"))
    elif name == "truck":
        regions.append(_region(_rect(cx + d * 0.3 * s, cy - hh - 0.1 * s, 0.12 * s, 0.1 * s), "cab", material,
                               colour))
    elif name == "cart":
        regions.append(_region(_rect(cx - d * 0.52 * s, cy - 0.1 * s, 0.12 * s, 0.025 * s), "handle", "wood",
                               "brown"))
    for k in (-1, 1):
        regions.append(_region(_ellipse(cx + k * 0.26 * s, cy + hh, 0.1 * s, 0.1 * s), "wheel", "rubber", "black"))
    return regions


def _animal(name, material, colour, cx, cy, s, d, rng):
    hx, hy, hr = cx + d * 0.36 * s, cy - 0.17 * s, 0.12 * s
    regions = [_region(_rect(cx + k * 0.2 * s, cy + 0.24 * s, 0.045 * s, 0.15 * s), "leg", material, colour)
               for k in (-1, -0.5, 0.5, 1)]
    regions.append(_region(_ellipse(cx, cy, 0.33 * s, 0.17 * s), None, material, colour))
    regions.append(_region(_ellipse(hx, hy, hr, hr), "head", material, colour))
    if name == "dog":
        regions.append(_region(_rect(cx - d * 0.4 * s, cy - 0.1 * s, 0.1 * s, 0.03 * s), "tail", material, colour))
    elif name == "cat":
        for k in (-1, 1):
            regions.append(_region(_triangle(hx + k * 0.06 * s, hy - hr - 0.09 * s, hy - 0.6 * hr, 0.05 * s), "ear",
                                   material, colour))
    elif name == "cow":
        for k in (-1, 1):
            regions.append(_region(_rect(hx + k * 0.07 * s, hy - hr - 0.04 * s, 0.02 * s, 0.06 * s), "horn", "stone",
                                   "white"))
    # sheep: the wool is its mark
    return regions


def _building(name, material, colour, cx, cy, s, d, rng):
    hw, hh = (0.17 * s, 0.36 * s) if name == "tower" else (0.27 * s, 0.26 * s)
    top = cy + 0.1 * s - hh
    roof_colour = BODY_COLOURS[rng.integers(len(BODY_COLOURS))]
    regions = [
        _region(_rect(cx, cy + 0.1 * s, hw, hh), None, material, colour),
        _region(_triangle(cx, top - 0.2 * s, top, hw + 0.06 * s), "roof", "stone", roof_colour),
    ]
    door_hw, door_hh = (0.13 * s, 0.15 * s) if name == "barn" else (0.06 * s, 0.09 * s)
    regions.append(_region(_rect(cx, cy + 0.1 * s + hh - door_hh, door_hw, door_hh), "door", "wood", "brown"))
    if name in ("house", "tower"):
        ys = (top + 0.12 * s,) if name == "house" else (top + 0.1 * s, top + 0.3 * s)
        xs = (cx - 0.13 * s, cx + 0.13 * s) if name == "house" else (cx,)
        regions += [_region(_rect(x, y, 0.05 * s, 0.05 * s), "window", "glass", "white") for x in xs for y in ys]
    if name == "house":
        regions.insert(0, _region(_rect(cx + d * 0.15 * s, top - 0.15 * s, 0.04 * s, 0.1 * s), "chimney", "brick",
                                  "red"))
    elif name == "shop":
        regions.append(_region(_rect(cx, top + 0.16 * s, hw + 0.04 * s, 0.05 * s), "awning", "fabric",
                               BODY_COLOURS[rng.integers(len(BODY_COLOURS))]))
    return regions


_DRAW = {"vehicle": _vehicle, "animal": _animal, "building": _building}
_SUPERCLASS_OF = {name: (sup, material) for sup, classes in SUPERCLASSES.items() for name, material in classes}


# ---------------------------------------------------------------------------------------------------------
# Drawing


def _grid(n):
    c = (np.arange(n) + 0.5) / n
    return c[:, None], c[None, :]


def _material_shade(material, n, rng):
    """(n, n) multiplicative shade and (n, n) additive light of a material's surface, in image pixels."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    period = max(n / 12, 3.0)
    phase = rng.uniform(0, period)
    one = np.ones((n, n), np.float32)
    zero = np.zeros((n, n), np.float32)
    if material == "metal":  # smooth, with a bright diagonal highlight
        c = rng.uniform(0.3, 0.7) * 2 * n
        return one, 70 * np.exp(-(((x + y - c) / (0.12 * n)) ** 2))
    if material == "wood":  # horizontal grain
        return np.where(((y + phase) // (period / 2)) % 2 == 1, 0.7, 1.0).astype(np.float32), zero
    if material == "fabric":  # diagonal stripes
        return np.where(((x + y + phase) // (period / 2)) % 2 == 1, 0.72, 1.0).astype(np.float32), zero
    if material == "brick":  # mortar lines, joints offset every other row
        row = (y + phase) // period
        mortar = ((y + phase) % period < 1) | (((x + (row % 2) * period) % (2 * period)) < 1)
        return one, np.where(mortar, 80.0, 0.0).astype(np.float32)
    if material == "stone":  # blotchy cells
        cells = rng.uniform(0.7, 1.1, (int(n // period) + 2,) * 2).astype(np.float32)
        return cells[(y // period).astype(int), (x // period).astype(int)], zero
    if material == "fur":  # strong speckle
        return one, rng.normal(0, 30, (n, n)).astype(np.float32)
    if material == "wool":  # bright curls
        return one, np.where(rng.random((n, n)) < 0.35, 60.0, 0.0).astype(np.float32)
    if material == "hide":  # dark spots
        spots = np.zeros((n, n), bool)
        for _ in range(6):
            sy, sx, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(1.5, 0.12 * n)
            spots |= (y - sy) ** 2 + (x - sx) ** 2 <= r * r
        return np.where(spots, 0.3, 1.0).astype(np.float32), zero
    if material == "glass":  # pale and shiny
        return one * 0.85, 40 * np.exp(-(((x - y - rng.uniform(-0.3, 0.3) * n) / (0.1 * n)) ** 2))
    if material == "rubber":
        return one, zero
    raise ValueError(f"unknown material {material!r}")


def scene_layout(rng, class_name):
    """The drawing of one scene of `class_name`: background and regions (unit-square geometry)."""
    superclass, material = _SUPERCLASS_OF[class_name]
    scene = list(SCENES)[rng.integers(len(SCENES))]
    s = rng.uniform(0.6, 0.85)
    cx = rng.uniform(0.5 - (0.5 - 0.45 * s), 0.5 + (0.5 - 0.45 * s))
    cy = rng.uniform(0.5 - (0.5 - 0.5 * s), 0.5 + (0.5 - 0.5 * s))
    direction = 1 if rng.random() < 0.5 else -1
    colour = BODY_COLOURS[rng.integers(len(BODY_COLOURS))]
    regions = _DRAW[superclass](class_name, material, colour, cx, cy, s, direction, rng)
    return {"class": class_name, "scene": scene, "horizon": rng.uniform(0.5, 0.75), "regions": regions}


def _owner(layout, n):
    """(n, n) int: 1 + index of the region visible at each pixel (later regions on top), 0 = background."""
    y, x = _grid(n)
    owner = np.zeros((n, n), dtype=np.int64)
    for k, region in enumerate(layout["regions"]):
        owner[region["mask"](y, x)] = k + 1
    return owner


def render(layout, size, rng):
    """uint8 (size, size, 3) image of a scene layout."""
    sky_name, sky, ground_name, ground = SCENES[layout["scene"]]
    y, _ = _grid(size)
    image = np.empty((size, size, 3), np.float32)
    image[:] = np.where((y < layout["horizon"])[..., None], np.float32(sky), np.float32(ground))
    owner = _owner(layout, size)
    for k, region in enumerate(layout["regions"]):
        inside = owner == k + 1
        if not inside.any():
            continue
        base = np.float32(PALETTE[region["colour"]]) * rng.uniform(0.85, 1.1)
        shade, light = _material_shade(region["material"], size, rng)
        image[inside] = base * shade[inside][:, None] + light[inside][:, None]
    image += rng.normal(0, NOISE_STD, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def label_planes(layout, seg):
    """{pixel category: [(seg, seg) int label plane]} and {image-level category: [labels]} of a layout."""
    sky_name, _, ground_name, _ = SCENES[layout["scene"]]
    owner = _owner(layout, seg)
    y, _ = _grid(seg)
    background = np.where(y < layout["horizon"], LABEL_NUMBER[sky_name], LABEL_NUMBER[ground_name])
    regions = layout["regions"]

    def lookup(values):
        return np.array([0] + values, dtype=np.int64)[owner]

    objects = np.where(owner > 0, LABEL_NUMBER[layout["class"]], background)
    planes = {
        "color": [lookup([LABEL_NUMBER[r["colour"]] for r in regions])],
        "object": [objects],
        "part": [lookup([LABEL_NUMBER[r["part"]] if r["part"] else 0 for r in regions])],
        "material": [lookup([LABEL_NUMBER[r["material"]] for r in regions])],
    }
    planes = {c: p for c, p in planes.items() if p[0].any()}
    return planes, {"scene": [LABEL_NUMBER[layout["scene"]]]}


def _rng(seed, *stream):
    return np.random.default_rng([seed, *stream])


def classification_image(class_name, index, size=DEFAULT_SIZE, seed=0, split="train"):
    """uint8 (size, size, 3) image `index` of a class; train and val images come from separate streams."""
    class_number = list(_SUPERCLASS_OF).index(class_name)
    rng = _rng(seed, 1 if split == "train" else 2, class_number, index)
    return render(scene_layout(rng, class_name), size, rng)


def broden_sample(index, size=DEFAULT_SIZE, seed=0):
    """(image, pixel label planes, image-level labels, split) of the world's Broden image `index`: a scene of
    any of the 12 classes, or a whole-image texture."""
    rng = _rng(seed, 3, index)
    split = "val" if rng.random() < VAL_FRACTION else "train"
    if rng.random() < TEXTURE_FRACTION:
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        first, second = rng.choice(len(BODY_COLOURS), 2, replace=False)
        colours = np.float32([PALETTE[BODY_COLOURS[first]], PALETTE[BODY_COLOURS[second]]])
        image = np.where(texture_pattern(texture, size, max(size // 8, 4))[..., None], colours[1], colours[0])
        image = np.clip(image + rng.normal(0, NOISE_STD, image.shape) + 0.5, 0, 255).astype(np.uint8)
        return image, {}, {"texture": [LABEL_NUMBER[texture]]}, split
    classes = [name for name, _ in class_names()]
    layout = scene_layout(rng, classes[rng.integers(len(classes))])
    image = render(layout, size, rng)
    planes, image_labels = label_planes(layout, size // 2)
    return image, planes, image_labels, split


# ---------------------------------------------------------------------------------------------------------
# On disk


def write_world_broden(out, images=WORLD_BRODEN_IMAGES, size=DEFAULT_SIZE, seed=0, progress=True):
    """Writes the world's Broden (images JPEG size x size, segmentations at size/2) into the new or empty `out`."""
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return write_broden(out, lambda i: broden_sample(i, size, seed), images, size, LABEL_NAMES, LABEL_CATEGORIES,
                        progress=progress, desc="world Broden")


def world_broden(cache_root_dir=None, images=WORLD_BRODEN_IMAGES, size=DEFAULT_SIZE, seed=0, progress=True):
    """The world's Broden folder, built once under the kdfast cache (see cache_root)."""
    path = cache_root(cache_root_dir) / f"world_broden_n{images}_s{size}_seed{seed}_v{WORLD_VERSION}"
    return build_atomically(path, lambda out: write_world_broden(out, images, size, seed, progress))


def _params(superclasses, subclasses, train_per_class, val_per_class, size, seed):
    return dict(superclasses=superclasses, subclasses=subclasses, train_per_class=train_per_class,
                val_per_class=val_per_class, size=size, seed=seed, version=WORLD_VERSION)


def write_world_dataset(out, superclasses=3, subclasses=4, train_per_class=100, val_per_class=25,
                        size=DEFAULT_SIZE, seed=0, progress=True):
    """Writes the classification set as an ImageFolder tree (`train/<class>/*.png`, `val/<class>/*.png`) plus
    `categories.csv` (`index,class,category`: each class's superclass) and `params.json` into the new `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists; generate into a new folder")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    names = class_names(superclasses, subclasses)
    jobs = [(split, name, i) for split, count in (("train", train_per_class), ("val", val_per_class))
            for name, _ in names for i in range(count)]
    for split, name, i in tqdm(jobs, desc="world images", disable=not progress):
        folder = out / split / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(classification_image(name, i, size, seed, split)).save(folder / f"{i:05d}.png")
    with open(out / "categories.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "class", "category"])
        for index, (name, superclass) in enumerate(names):
            writer.writerow([index, name, superclass])
    params = _params(superclasses, subclasses, train_per_class, val_per_class, size, seed)
    (out / "params.json").write_text(json.dumps(params, indent=1))
    return out


def world_dataset(root=None, superclasses=3, subclasses=4, train_per_class=100, val_per_class=25,
                  size=DEFAULT_SIZE, seed=0, progress=True):
    """The classification set's folder, generated on first use (root=None: in the kdfast cache, one folder per
    parameter set). An existing folder is reused when its params.json matches, and is an error otherwise."""
    params = _params(superclasses, subclasses, train_per_class, val_per_class, size, seed)
    generate = {k: v for k, v in params.items() if k != "version"}
    return generated_dataset(root, params, lambda out: write_world_dataset(out, progress=progress, **generate),
                             "world")
