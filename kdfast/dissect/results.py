"""From summed tally counts to IoU, unit labels and concept detectors, written as NetDissect-Lite's
tally.csv, summary.json and the quantile/IoU sweep.csv."""
import csv
import dataclasses
import json

import numpy as np

from kdfast.dissect.config import format_value


@dataclasses.dataclass(frozen=True)
class Concepts:
    """The dataset's label space: label number → name and primary category index (−1: none; label 0 is
    'unlabeled' and never a concept)."""

    categories: tuple
    label_names: tuple
    label_category: np.ndarray  # int64 (L,)

    def __post_init__(self):
        if len(self.label_names) != len(self.label_category):
            raise ValueError(
                f"{len(self.label_names)} label names but {len(self.label_category)} label categories"
            )
        bad = self.label_category[(self.label_category < -1) | (self.label_category >= len(self.categories))]
        if bad.size:
            raise ValueError(f"label categories must be -1 or index one of {self.categories}, got {bad[:5]}")

    def labels_of(self, category):
        """Label numbers whose primary category is `category` (an index), label 0 excluded."""
        labels = np.flatnonzero(self.label_category == category)
        return labels[labels > 0]

    @property
    def concept_mask(self):
        """(L,) bool: labels that can name a unit (a category, and not label 0)."""
        mask = self.label_category >= 0
        mask[:1] = False
        return mask


@dataclasses.dataclass(frozen=True)
class UnitLabel:
    unit: int  # 0-based
    label: int  # label number
    category: int  # category index
    score: float  # IoU


@dataclasses.dataclass(frozen=True)
class DetectorCount:
    iou_threshold: float
    per_category: dict  # category name → detector units whose label is of that category
    unique: int  # distinct labels among the detectors
    total: int
    units: tuple  # UnitLabels of the detectors, best score first


@dataclasses.dataclass(frozen=True)
class LayerTally:
    """One layer's summed counts at one quantile."""

    layer: str
    quantile: float
    denominator: str
    thresholds: np.ndarray  # float32 (U,)
    label_counts: np.ndarray  # int64 (L,)
    intersections: np.ndarray  # int64 (U, L)
    activations: np.ndarray  # int64 (U, C)
    concepts: Concepts

    @property
    def units(self):
        return self.intersections.shape[0]

    def iou(self):
        """(U, L) float64: inter / (act_cat(u, cat(l)) + count(l) − inter), 0 where the denominator is 0
        and for labels that are not concepts."""
        cats = self.concepts.label_category
        act = np.where(cats >= 0, self.activations[:, np.maximum(cats, 0)], 0)
        inter = self.intersections
        denominator = (act + self.label_counts[None, :] - inter).astype(np.float64)
        iou = np.divide(inter, denominator, out=np.zeros(inter.shape, np.float64), where=denominator > 0)
        iou[:, ~self.concepts.concept_mask] = 0.0
        return iou

    def best_in(self, iou, labels):
        """Best label per unit among `labels` (ties: the lowest label number)."""
        return labels[np.argmax(iou[:, labels], axis=1)]

    def unit_labels(self, iou=None):
        """Each unit's best label over all concepts, in unit order."""
        iou = self.iou() if iou is None else iou
        concepts = np.flatnonzero(self.concepts.concept_mask)
        if concepts.size == 0:
            raise ValueError("the dataset has no labelled concepts (every label is 0 or without a category)")
        best = self.best_in(iou, concepts)
        cats = self.concepts.label_category
        return [UnitLabel(u, int(label), int(cats[label]), float(iou[u, label])) for u, label in enumerate(best)]

    def detectors(self, iou_threshold, labels=None):
        """Units whose best IoU is >= iou_threshold, counted per category."""
        labels = self.unit_labels() if labels is None else labels
        found = sorted((u for u in labels if u.score >= iou_threshold), key=lambda u: (-u.score, u.unit))
        per_category = {name: 0 for name in self.concepts.categories}
        for u in found:
            per_category[self.concepts.categories[u.category]] += 1
        return DetectorCount(
            iou_threshold=float(iou_threshold),
            per_category=per_category,
            unique=len({u.label for u in found}),
            total=len(found),
            units=tuple(found),
        )


def tally_header(categories):
    header = ["unit", "category", "label", "score"]
    for name in categories:
        header += [f"{name}-label", f"{name}-truth", f"{name}-activation", f"{name}-intersect", f"{name}-iou"]
    return header


def write_tally_csv(path, tally):
    """NetDissect-Lite's tally.csv: one row per unit (1-based), best score first (ties: lower unit first).
    Per category, the best label among the labels whose primary category it is (blank when it has none)."""
    concepts = tally.concepts
    iou = tally.iou()
    labels = tally.unit_labels(iou)
    per_category = [concepts.labels_of(c) for c in range(len(concepts.categories))]
    best = [tally.best_in(iou, labels_c) if labels_c.size else None for labels_c in per_category]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(tally_header(concepts.categories))
        for u in sorted(labels, key=lambda u: (-u.score, u.unit)):
            row = [u.unit + 1, concepts.categories[u.category], concepts.label_names[u.label], repr(u.score)]
            for c, best_c in enumerate(best):
                if best_c is None:
                    row += ["", "", "", "", ""]
                    continue
                label = best_c[u.unit]
                row += [
                    concepts.label_names[label],
                    int(tally.label_counts[label]),
                    int(tally.activations[u.unit, c]),
                    int(tally.intersections[u.unit, label]),
                    repr(float(iou[u.unit, label])),
                ]
            writer.writerow(row)
    return labels


def summary(tally, detectors, model, images):
    return {
        "layer": tally.layer,
        "units": tally.units,
        "quantile": tally.quantile,
        "iou_threshold": detectors.iou_threshold,
        "detectors": detectors.per_category,
        "unique": detectors.unique,
        "total": detectors.total,
        "denominator": tally.denominator,
        "model": model,
        "images": int(images),
    }


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def sweep_rows(tallies, iou_thresholds):
    """One row per (quantile, IoU threshold): detectors per category, unique, total."""
    rows = []
    for tally in tallies:
        labels = tally.unit_labels()
        for threshold in iou_thresholds:
            found = tally.detectors(threshold, labels)
            rows.append({
                "quantile": tally.quantile,
                "iou_threshold": float(threshold),
                "detectors": found.per_category,
                "unique": found.unique,
                "total": found.total,
            })
    return rows


def write_sweep_csv(path, rows, categories):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["quantile", "iou_threshold", *categories, "unique", "total"])
        for row in rows:
            writer.writerow([format_value(row["quantile"]), format_value(row["iou_threshold"]),
                             *(row["detectors"][c] for c in categories), row["unique"], row["total"]])
