"""Class → category maps (which classes count as "semantically similar") for the category entropy.

A map is a CSV with at least the columns `index` (class index, 0-based) and `category` (its category name);
other columns (e.g. ImageNet's `synset`) are ignored. The packaged ImageNet map groups the 1,000 classes into 67
categories, one of them "other" (Eshed 2020, as used by Han et al. ICML 2023); "other" is excluded by default as its
classes are not similar to each other.
"""

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

IMAGENET_CATEGORIES = "imagenet_categories.csv"


@dataclass(frozen=True)
class CategoryMap:
    """`class_category[k]` is class k's category name, or None when class k belongs to an excluded category."""

    class_category: tuple

    @classmethod
    def from_groups(cls, groups, num_classes):
        """From {category: [class indices]}; classes not listed are excluded (no category)."""
        class_category = [None] * num_classes
        for name, members in groups.items():
            for k in members:
                if not 0 <= k < num_classes:
                    raise ValueError(f"category '{name}' lists class {k}, outside 0..{num_classes - 1}")
                if class_category[k] is not None:
                    raise ValueError(f"class {k} is in two categories: '{class_category[k]}' and '{name}'")
                class_category[k] = name
        return cls(tuple(class_category))

    @property
    def num_classes(self):
        return len(self.class_category)

    @property
    def categories(self):
        return sorted({c for c in self.class_category if c is not None})

    def members(self, category):
        return [k for k, c in enumerate(self.class_category) if c == category]

    def same_category_matrix(self):
        """(K, K) bool: row k marks the classes sharing class k's category; rows of excluded classes are empty."""
        names = self.class_category
        return torch.tensor([[a is not None and a == b for b in names] for a in names], dtype=torch.bool)

    def included(self, targets):
        """Bool mask over `targets`: True where the class has a category (is not excluded)."""
        targets = torch.as_tensor(targets)
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.num_classes):
            raise ValueError(
                f"targets hold class indices {int(targets.min())}..{int(targets.max())}, but the category map "
                f"covers classes 0..{self.num_classes - 1}"
            )
        has_category = torch.tensor([c is not None for c in self.class_category], dtype=torch.bool)
        return has_category[targets.long()]


def _read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in ("index", "category") if c not in columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; expected a header with 'index' and 'category', found {columns}"
            )
        # Row numbers as a spreadsheet shows them: the header is line 1.
        return [(line, row["index"], row["category"]) for line, row in enumerate(reader, start=2)]


def load_category_map(path=None, num_classes=None, exclude=("other",)):
    """Reads a class → category CSV (default: the packaged ImageNet map) into a CategoryMap.

    Every class 0..num_classes−1 must be listed exactly once (num_classes defaults to max index + 1); classes
    whose category is in `exclude` get no category. Bad rows raise ValueError naming the file and line.
    """
    if path is None:
        source = resources.files("kdfast.data").joinpath(IMAGENET_CATEGORIES)
        with resources.as_file(source) as packaged:
            rows = _read_rows(packaged)
        path = f"<kdfast>/data/{IMAGENET_CATEGORIES}"
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"category map {path} does not exist")
        rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows after the header")
    by_class = {}
    for line, index, category in rows:
        try:
            k = int(index)
        except (TypeError, ValueError):
            raise ValueError(f"{path} line {line}: index '{index}' is not an integer class index") from None
        if k < 0 or (num_classes is not None and k >= num_classes):
            limit = f"0..{num_classes - 1}" if num_classes is not None else "≥ 0"
            raise ValueError(f"{path} line {line}: unknown class {k}; the model's classes are {limit}")
        if not category or not category.strip():
            raise ValueError(f"{path} line {line}: class {k} has an empty category")
        if k in by_class:
            raise ValueError(f"{path} line {line}: class {k} is listed again (first at line {by_class[k][0]})")
        by_class[k] = (line, category.strip())
    if num_classes is None:
        num_classes = max(by_class) + 1
    unlisted = [k for k in range(num_classes) if k not in by_class]
    if unlisted:
        raise ValueError(
            f"{path}: classes {unlisted[:20]}{' …' if len(unlisted) > 20 else ''} are not listed; "
            f"list every class 0..{num_classes - 1} (use category 'other' to exclude one)"
        )
    excluded = set(exclude)
    return CategoryMap(tuple(None if by_class[k][1] in excluded else by_class[k][1] for k in range(num_classes)))
