"""PASCAL VOC 2007/2012 as multi-label classification with per-class boxes, and a generator of that layout.

Layout (the official one): `<root>/JPEGImages/<id>.jpg`, `<root>/Annotations/<id>.xml` (`<object><name>` and
`<bndbox><xmin>…</bndbox>`, 1-based inclusive pixel coordinates), `<root>/ImageSets/Main/<split>.txt` (one id
per line). Targets are {0, 1} floats over the classes present (all objects count, `difficult` ones too);
boxes become half-open 0-based [x0, x1) = [xmin − 1, xmax). Classes: the 20 VOC classes, or the names in
`<root>/classes.txt` (one per line; our addition, written by the generator for smaller synthetic sets).

`generate_voc_style(root, ...)` writes that layout with 1–3 objects per image, each class a shape/colour pair
on a noisy background.
"""
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from kdfast.data.boxes import pad_boxes
from kdfast.data.generated import generated_dataset
from kdfast.data.hierarchical import SHAPES, _hsv_to_rgb, _shape_mask

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def voc_classes(root):
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return list(VOC_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{path}: expected distinct class names, one per line, got {names}")
    return names


def _number(path, index, box, key):
    node = box.find(key)
    try:
        return int(round(float(node.text)))
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{path}: object {index}: <bndbox><{key}> must be a number, got "
                         f"{None if node is None else node.text!r}") from None


def parse_annotation(path, classes):
    """[(class index, x0, y0, x1, y1)] of an Annotations/*.xml file (half-open, 0-based)."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise ValueError(f"{path}: malformed XML ({exc})") from None
    objects = []
    for index, obj in enumerate(tree.getroot().iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise ValueError(f"{path}: object {index}: unknown class {name!r}; known classes: {', '.join(classes)}")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {index} ({name}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(path, index, box, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((classes.index(name), xmin - 1, ymin - 1, xmax, ymax))
    return objects


class VOCMultiLabel(Dataset):
    """One ImageSets/Main split. Items: {"images", "targets" (C,) float {0, 1}, "boxes" (M, 5), "indices"};
    `transform` is a kdfast.data.boxes.BoxedTransform."""

    def __init__(self, root, split, transform):
        self.root = Path(root)
        self.classes = voc_classes(self.root)
        listing = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"VOC split list {listing} does not exist (expected the VOC layout "
                                    "JPEGImages/, Annotations/, ImageSets/Main/<split>.txt)")
        self.ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"{listing} lists no images")
        self.objects = []
        for line, image_id in enumerate(self.ids, start=1):
            image = self.root / "JPEGImages" / f"{image_id}.jpg"
            if not image.is_file():
                raise FileNotFoundError(f"{listing} line {line}: image {image} does not exist")
            annotation = self.root / "Annotations" / f"{image_id}.xml"
            if not annotation.is_file():
                raise FileNotFoundError(f"{listing} line {line}: annotation {annotation} does not exist")
            self.objects.append(parse_annotation(annotation, self.classes))
        self.max_boxes = max(1, max(len(o) for o in self.objects))
        self.targets = [self._target(o) for o in self.objects]
        self.transform = transform

    def _target(self, objects):
        target = torch.zeros(len(self.classes))
        for c, *_ in objects:
            target[c] = 1.0
        return target

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        with Image.open(self.root / "JPEGImages" / f"{self.ids[index]}.jpg") as image:
            tensor, boxes = self.transform(image, self.objects[index])
        return {"images": tensor, "targets": self.targets[index], "boxes": pad_boxes(boxes, self.max_boxes),
                "indices": index}


# ---------------------------------------------------------------------------------------------------------
# The generator


def _annotation_xml(image_id, size, objects, classes):
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    dims = ET.SubElement(root, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(dims, key).text = str(value)
    for c, x0, y0, x1, y1 in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[c]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, key).text = str(value)
    return ET.tostring(root, encoding="unicode")


def render(rng, class_ids, num_classes, size):
    """(uint8 image, [(class, x0, y0, x1, y1)]): class k is shape k mod 6 in hue k / num_classes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = rng.uniform(0.3, 0.6, 3)[None, None, :] + rng.normal(0, 0.05, (size, size, 3))
    objects = []
    for c in class_ids:
        radius = rng.uniform(0.12, 0.2) * size
        cy, cx = rng.uniform(radius, size - radius, 2)
        mask = _shape_mask(SHAPES[c % len(SHAPES)], yy - cy, xx - cx, radius)
        image[mask] = np.array(_hsv_to_rgb(c / num_classes, 0.8, 0.9))
        rows, cols = np.nonzero(mask)
        objects.append((int(c), int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), objects


def generate_voc_style(root=None, num_classes=4, train=120, val=40, test=40, size=64, seed=0):
    """Writes (or finds) a VOC-layout folder with splits train/val/test; returns it. The first num_classes VOC
    class names are used (listed in classes.txt). root None: a folder named by the parameters in the kdfast
    cache (kdfast.data.generated)."""
    for name, value in (("num_classes", num_classes), ("train", train), ("val", val), ("test", test),
                        ("size", size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_classes > len(VOC_CLASSES):
        raise ValueError(f"num_classes must be at most {len(VOC_CLASSES)}, got {num_classes}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    params = {"num_classes": num_classes, "train": train, "val": val, "test": test, "size": size, "seed": seed}

    def write(folder):
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (folder / sub).mkdir(parents=True)
        classes = list(VOC_CLASSES[:num_classes])
        rng = np.random.default_rng(seed)
        index = 0
        for split, count in (("train", train), ("val", val), ("test", test)):
            ids = []
            for _ in range(count):
                image_id = f"{2000 + index // 100000}_{index:06d}"
                chosen = rng.choice(num_classes, size=int(rng.integers(1, min(3, num_classes) + 1)), replace=False)
                image, objects = render(rng, sorted(chosen.tolist()), num_classes, size)
                Image.fromarray(image).save(folder / "JPEGImages" / f"{image_id}.jpg", quality=95)
                (folder / "Annotations" / f"{image_id}.xml").write_text(
                    _annotation_xml(image_id, size, objects, classes))
                ids.append(image_id)
                index += 1
            (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (folder / "classes.txt").write_text("\n".join(classes) + "\n")
        (folder / "params.json").write_text(json.dumps(params, indent=1))

    return generated_dataset(root, params, write, "voc_style")
