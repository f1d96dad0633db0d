"""Measures of the e2KD paper's Waterbirds and VOC settings on trained runs (checkpoints of scripts/distill.py
with data.type waterbirds / voc):

* Waterbirds: accuracy and teacher agreement per group, worst group, in / out of distribution
  (kdfast.metrics.groups).
* VOC: multi-label F1 (logits >= 0) and the mean EPG / IoU (threshold 0.05, as the paper) of the explanations
  of each image's ground-truth classes against their boxes (kdfast.metrics.multilabel), with B-cos
  contributions or GradCAM (upsampled to the image) as explanations.

    rows = evaluate_runs(["runs/e2kd_wb_kd/best.pt", ...], split="test")
"""
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kdfast.data.boxes import BoxedTransform
from kdfast.distill.config import from_dict
from kdfast.distill.models import build_model
from kdfast.distill.task_data import BOXED_TYPES, dataset_class, boxed_root
from kdfast.explain.gradcam import resize_maps
from kdfast.metrics.groups import group_metrics
from kdfast.metrics.multilabel import (E2KD_IOU_THRESHOLD, explained_pairs, localisation_scores, mean_or_none,
                                       multilabel_f1)


class _OneProcess:
    main = True

    def barrier(self):
        pass


def load_run(checkpoint):
    """(student model in eval mode, the run's Config, class names) from a trainer checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "config" not in saved or "model" not in saved:
        raise ValueError(f"{path}: not a scripts/distill.py checkpoint (needs 'model' and 'config' entries)")
    config = from_dict(saved["config"])
    classes = list(saved.get("classes") or [])
    model = build_model(config.student, len(classes) or None, "student")
    model.load_state_dict(saved["model"])
    return model.eval(), config, classes


def evaluation_set(config, split):
    """The run's dataset split (no augmentation), with boxes."""
    data = config.data
    if data.type not in BOXED_TYPES:
        raise ValueError(f"the run was trained on data.type {data.type}; these measures need waterbirds or voc")
    transform = BoxedTransform(data.image_size, flip=False, normalize=data.normalize, mean=data.mean, std=data.std,
                               bcos=data.input_encoding == "bcos")
    return dataset_class(data.type)(boxed_root(data, _OneProcess()), split, transform)


@torch.no_grad()
def _predict(model, dataset, batch_size):
    out = {"logits": [], "targets": [], "boxes": [], "groups": [], "images": []}
    for batch in DataLoader(dataset, batch_size=batch_size):
        out["logits"].append(model(batch["images"]).float())
        for key in ("targets", "boxes", "groups", "images"):
            if key in batch:
                out[key].append(batch[key])
    return {k: torch.cat(v) for k, v in out.items() if v}


def explanation_kind(config):
    return "bcos" if config.data.input_encoding == "bcos" else "gradcam"


def explain_pairs(model, images, pairs, kind, batch_size=64):
    """(N, H, W) explanation maps of (image, class) pairs at the image resolution."""
    from kdfast.distill.guidance import explanation_maps

    maps = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        index = torch.tensor([p[0] for p in chunk])
        classes = torch.tensor([p[1] for p in chunk])
        _, m = explanation_maps(kind, model, images[index], classes)
        maps.append(resize_maps(m.detach(), images.shape[-2:]))
    return torch.cat(maps) if maps else torch.zeros(0, *images.shape[-2:])


def waterbirds_measures(model, dataset, teacher=None, batch_size=64):
    student = _predict(model, dataset, batch_size)
    teacher_predictions = None
    if teacher is not None:
        teacher_predictions = _predict(teacher, dataset, batch_size)["logits"].argmax(1)
    return group_metrics(student["logits"].argmax(1), student["targets"], student["groups"], teacher_predictions)


def voc_measures(model, dataset, kind, iou_threshold=E2KD_IOU_THRESHOLD, classes="ground_truth", batch_size=64):
    from kdfast.distill.guidance import box_masks

    predicted = _predict(model, dataset, batch_size)
    pairs = explained_pairs(predicted["logits"], predicted["targets"], predicted["boxes"], classes)
    result = {"f1": multilabel_f1(predicted["logits"], predicted["targets"]), "explained": len(pairs)}
    if pairs:
        maps = explain_pairs(model, predicted["images"], pairs, kind)
        index = torch.tensor([p[0] for p in pairs])
        masks = box_masks(predicted["boxes"][index], torch.tensor([p[1] for p in pairs]), maps.shape[-2:]).bool()
        scores = localisation_scores(maps.double(), masks, iou_threshold)
        result.update({"epg": mean_or_none(scores["epg"]), "iou": mean_or_none(scores["iou"])})
    else:
        result.update({"epg": None, "iou": None})
    return result


def evaluate_run(checkpoint, split="test", teacher=None, iou_threshold=E2KD_IOU_THRESHOLD, classes="ground_truth"):
    """One row of measures for a run: Waterbirds group measures or VOC F1 / EPG / IoU (of the ground-truth
    classes, or of the predicted ones among them: `classes`). `teacher`: a checkpoint for the agreement
    (default: the run's own teacher.weights, when it names one)."""
    model, config, _ = load_run(checkpoint)
    dataset = evaluation_set(config, split)
    row = {"run": config.name, "checkpoint": str(checkpoint), "method": config.method.name, "split": split}
    if config.data.type == "voc":
        row.update(voc_measures(model, dataset, explanation_kind(config), iou_threshold, classes))
        return row
    teacher_path = teacher or config.teacher.weights
    teacher_model = load_run(teacher_path)[0] if teacher_path and Path(teacher_path).is_file() else None
    row.update(waterbirds_measures(model, dataset, teacher_model))
    return row


def boxed_runs(checkpoints):
    """True when every checkpoint is a scripts/distill.py run on waterbirds / voc data, False when none is (or
    a file is not such a checkpoint); a mix is an error naming the files."""
    kinds = {}
    for path in checkpoints:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            data_type = saved["config"]["data"]["type"] if isinstance(saved, dict) and "config" in saved else None
        except (OSError, KeyError, TypeError, RuntimeError):
            data_type = None
        kinds[str(path)] = data_type in BOXED_TYPES
    if len(set(kinds.values())) > 1:
        boxed = [p for p, k in kinds.items() if k]
        raise ValueError(f"{', '.join(boxed)} were trained on Waterbirds/VOC data and the other models were not; "
                         "evaluate them separately")
    return bool(kinds) and all(kinds.values())


def evaluate_runs(checkpoints, split="test", teacher=None, iou_threshold=E2KD_IOU_THRESHOLD, classes="ground_truth"):
    return [evaluate_run(c, split, teacher, iou_threshold, classes) for c in checkpoints]
