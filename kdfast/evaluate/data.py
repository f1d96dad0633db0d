"""The data a model comparison runs on, held in memory: test images (and training images for DiffROAR's
retraining), with the ground truth each metric needs when the dataset has it (ternary heatmaps, boxes, a class →
category map). Images are float (N, 3, H, W) in [0, 1]; models normalise internally (see models.Normalized)."""
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms
from tqdm import tqdm

from kdfast.data.categories import CategoryMap, load_category_map
from kdfast.data.csv_rows import csv_rows
from kdfast.data.synthetic_shapes import CLASSES, FAMILIES, SyntheticShapes, object_boxes
from kdfast.metrics.localization import boxes_to_mask


@dataclass
class EvalData:
    name: str
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    train_images: torch.Tensor = None
    train_labels: torch.Tensor = None
    ground_truth: torch.Tensor = None  # (N, H, W) classes 0/1/2 (synthetic shapes only)
    box_masks: torch.Tensor = None  # (N, H, W) bool; an empty mask = an image without boxes
    category_map: CategoryMap = None
    class_names: tuple = None


def subset(count, limit, seed):
    """Sorted indices of a seeded random subset of `limit` out of `count` items (all of them when limit is None)."""
    if limit is None or limit >= count:
        return torch.arange(count)
    if limit < 1:
        raise ValueError(f"a subset needs at least one item, got {limit}")
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def synthetic_shapes_data(root, image_size=None, test_limit=None, train_limit=None, seed=0):
    test = SyntheticShapes(root, "test", image_size)
    images, labels, truth = _load(test, subset(len(test), test_limit, seed))
    train = SyntheticShapes(root, "train", image_size)
    train_images, train_labels, _ = _load(train, subset(len(train), train_limit, seed + 1))
    masks = boxes_to_mask(object_boxes(truth), *truth.shape[-2:])
    return EvalData(f"synthetic shapes ({root})", images, labels, len(CLASSES), train_images, train_labels, truth,
                    masks, CategoryMap.from_groups(FAMILIES, len(CLASSES)), CLASSES)


def _load(dataset, indices):
    items = [dataset[int(i)] for i in tqdm(indices, desc="loading images", leave=False, disable=len(indices) < 500)]
    if not items:
        raise ValueError(f"{getattr(dataset, 'root', dataset)} holds no images")
    columns = list(zip(*items))
    return (torch.stack(columns[0]), torch.tensor(columns[1]),
            torch.stack(columns[2]) if len(columns) > 2 else None)


def read_boxes(path, dataset, image_size):
    """Per image of an ImageFolder, its boxes from a CSV `image,x0,y0,x1,y1` (image: path inside the split
    folder, as `class/file.png`; coordinates in the original image's pixels, x1/y1 exclusive; several rows per
    image allowed), rescaled to the evaluated image_size × image_size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file {path} does not exist")
    root = Path(dataset.root)
    index = {Path(file).relative_to(root).as_posix(): i for i, (file, _) in enumerate(dataset.samples)}
    boxes = [[] for _ in dataset.samples]
    for line, row in csv_rows(path, ("image", "x0", "y0", "x1", "y1")):
        if row["image"] not in index:
            raise ValueError(f"{path} line {line}: image '{row['image']}' is not in {root}")
        try:
            x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
        except ValueError:
            raise ValueError(f"{path} line {line}: coordinates must be numbers, got {dict(row)}") from None
        i = index[row["image"]]
        with Image.open(dataset.samples[i][0]) as image:
            width, height = image.size
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"{path} line {line}: box ({x0}, {y0}, {x1}, {y1}) is empty or outside the "
                             f"{width}×{height} image {row['image']}")
        sx, sy = image_size / width, image_size / height
        boxes[i].append((int(x0 * sx), int(y0 * sy), max(int(x0 * sx) + 1, round(x1 * sx)),
                         max(int(y0 * sy) + 1, round(y1 * sy))))
    return boxes


def image_folder_data(root, image_size, test_split="val", train_split="train", categories=None, boxes=None,
                      test_limit=None, train_limit=None, seed=0):
    """User data as an ImageFolder tree `root/<split>/<class>/<image>`; images are resized to
    image_size × image_size (no crop, so boxes keep their content). `categories` defaults to
    `root/categories.csv` when that exists (kdfast's hierarchical dataset writes one)."""
    from kdfast.data.imagefolder import image_folder

    resize = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    test = image_folder(root, test_split, resize)
    keep = subset(len(test), test_limit, seed)
    images, labels, _ = _load(test, keep)
    num_classes = len(test.classes)
    data = EvalData(f"image folder {Path(root) / test_split}", images, labels, num_classes,
                    class_names=tuple(test.classes))
    if (Path(root) / train_split).is_dir():
        train = image_folder(root, train_split, resize)
        if train.classes != test.classes:
            raise ValueError(f"{root}: {train_split}/ and {test_split}/ hold different classes")
        data.train_images, data.train_labels, _ = _load(train, subset(len(train), train_limit, seed + 1))
    if categories is None and (Path(root) / "categories.csv").is_file():
        categories = Path(root) / "categories.csv"
    if categories is not None:
        data.category_map = load_category_map(categories, num_classes)
    if boxes is not None:
        per_image = read_boxes(boxes, test, image_size)
        data.box_masks = boxes_to_mask([per_image[int(i)] for i in keep], image_size, image_size)
    return data

