"""Runs the interpretability metrics on several models over one EvalData and writes results.json, figures and
an HTML report. Each metric needs something of the data (ground-truth heatmaps, boxes, a category map, training
images) or of the run (a teacher); a metric whose needs are missing is an error when asked for by name and a
noted skip when it is only part of the default set."""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdfast.evaluate.models import TINY_RESNET, build_classifier
from kdfast.evaluate.report import write_report
from kdfast.metrics import fiveband as fb
from kdfast.metrics.agreement import top1_agreement
from kdfast.metrics.attribution import explanation_maps, loss_gradients, saliency
from kdfast.metrics.diffroar import FRACTIONS, diffroar
from kdfast.metrics.entropy import category_entropy, entire_entropy
from kdfast.metrics.localization import box_iou, energy_pointing_game
from kdfast.metrics.lossgrad import gradient_display
from kdfast.metrics.plots import ground_truth_colours, image_grid, line_plot, radar_plots
from kdfast.metrics.retrain import predict_logits
from kdfast.metrics.shift import shift_equivariance

METRICS = ("agreement", "entropy", "fiveband", "diffroar", "lossgrad", "epg", "shift")


@dataclass
class EvalOptions:
    batch_size: int = 64
    explainer: str = "saliency"  # for EPG/IoU and the shift curve: saliency | gradcam
    gradcam_layer: str = None  # default: the model's last convolutional block
    iou_threshold: float = 0.5
    fiveband_steps: int = fb.STEPS
    fiveband_delta: float = fb.DELTA
    max_shift: int = 8
    shift_images: int = 32
    visual_samples: int = 10
    roar_arch: str = TINY_RESNET
    roar_kwargs: dict = field(default_factory=lambda: {"strides": [2, 2, 2, 2]})
    roar_fractions: tuple = FRACTIONS
    roar_epochs: int = 2
    roar_runs: int = 1
    roar_batch_size: int = 32
    roar_lr: float = 1e-3
    seed: int = 0


def missing_requirement(metric, data, teacher):
    """Why `metric` cannot run on this data (None when it can)."""
    if metric == "agreement" and teacher is None:
        return "needs a teacher (--teacher)"
    if metric == "entropy" and data.category_map is None:
        return "needs a class → category map (--categories)"
    if metric == "fiveband" and data.ground_truth is None:
        return "needs ground-truth heatmaps (the synthetic shapes data)"
    if metric == "diffroar" and data.train_images is None:
        return "needs training images to retrain on"
    if metric == "epg" and (data.box_masks is None or not bool(data.box_masks.flatten(1).any(1).any())):
        return "needs bounding boxes (--boxes, or the synthetic shapes data)"
    return None


def plan_metrics(metrics, data, teacher, explicit):
    """(metrics to run, {metric: reason skipped}); unknown names and, when `explicit`, unmet needs raise."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    run, skipped = [], {}
    for metric in metrics:
        reason = missing_requirement(metric, data, teacher)
        if reason and explicit:
            raise ValueError(f"metric '{metric}' {reason}")
        if reason:
            skipped[metric] = reason
        else:
            run.append(metric)
    return run, skipped


def sample_per_class(labels, count):
    """Indices of up to `count` test images, cycling through the classes so each appears (Figs. 7, 8)."""
    by_class = [(labels == k).nonzero().flatten().tolist() for k in sorted(set(labels.tolist()))]
    picked, round_ = [], 0
    while len(picked) < min(count, len(labels)):
        for members in by_class:
            if round_ < len(members) and len(picked) < count:
                picked.append(members[round_])
        round_ += 1
    return torch.tensor(picked, dtype=torch.long)


class Evaluation:
    def __init__(self, models, data, out_dir, teacher=None, options=None):
        if not models:
            raise ValueError("no models to evaluate")
        self.models, self.data, self.teacher = models, data, teacher
        self.options = options or EvalOptions()
        self.out = Path(out_dir)
        self.figures_dir = self.out / "figures"
        self.figures = {}
        self._saliency = {}

    # --- shared computations

    def test_saliency(self, name):
        """(N, C, H, W) captum Saliency (abs) of model `name` for the true classes, computed once."""
        if name not in self._saliency:
            self._saliency[name] = saliency(self.models[name], self.data.test_images, self.data.test_labels,
                                            self.options.batch_size)
        return self._saliency[name]

    def explanations(self, name, images, targets):
        """(N, H, W) explanations by the chosen explainer (EPG/IoU, shift curve)."""
        return explanation_maps(self.models[name], images, targets, self.options.explainer,
                                self.options.gradcam_layer, self.options.batch_size)

    def figure(self, key, path):
        self.figures[key] = str(Path(path).relative_to(self.out))

    # --- metrics

    def agreement(self):
        teacher_logits = predict_logits(self.teacher, self.data.test_images)
        return {name: top1_agreement(self.logits[name], teacher_logits) for name in self.models}

    def entropy(self):
        labels, cmap = self.data.test_labels, self.data.category_map
        correct = torch.stack([self.logits[n].argmax(1) == labels for n in self.models]).all(dim=0)
        chosen = correct & cmap.included(labels)
        result = {"samples": int(chosen.sum()), "models": {}}
        for name in self.models:
            logits = self.logits[name][chosen]
            result["models"][name] = {
                "entire": float(entire_entropy(logits).mean()) if len(logits) else None,
                "category": float(category_entropy(logits, labels[chosen], cmap).mean()) if len(logits) else None,
            }
        return result

    def fiveband(self):
        o, truth = self.options, self.data.ground_truth
        schedule = dict(steps=o.fiveband_steps, delta=o.fiveband_delta)
        bands, splits = {}, {}
        for name in self.models:
            heat = fb.normalize_heatmap(self.test_saliency(name))
            bands[name] = fb.five_band_scores(heat, truth, **schedule)
            splits[name] = {}
            for split in fb.SPLITS:
                both = fb.split_has_both(truth, split)
                scores = fb.binary_split_scores(heat[both], truth[both], split, **schedule)
                splits[name][split] = {**scores, "images": int(both.sum()), "excluded": int((~both).sum())}
        self.figure("radar", radar_plots(splits, self.figures_dir / "radar.png"))
        shown = sample_per_class(self.data.test_labels, o.visual_samples)
        rows = [("input", self.data.test_images[shown]), ("ground truth", ground_truth_colours(truth[shown]))]
        rows += [(name, fb.normalize_heatmap(self.test_saliency(name)[shown])) for name in self.models]
        cmaps = {name: ("hot", 0, 1) for name in self.models}
        self.figure("saliency", image_grid(rows, self.figures_dir / "saliency.png", cmaps,
                                           title="Saliency (captum, |gradient|), normalised per image"))
        return {"bands": bands, "binary_splits": splits}

    def diffroar(self):
        o, d = self.options, self.data
        results = {}
        for name, model in self.models.items():
            train_attr = saliency(model, d.train_images, d.train_labels, o.batch_size)
            results[name] = diffroar(
                lambda: build_classifier(o.roar_arch, d.num_classes, o.roar_kwargs, where="--roar-arch"),
                (d.train_images, d.train_labels, train_attr),
                (d.test_images, d.test_labels, self.test_saliency(name)),
                fractions=o.roar_fractions, runs=o.roar_runs, epochs=o.roar_epochs, batch_size=o.roar_batch_size,
                lr=o.roar_lr, seed=o.seed)
        curves = {name: (list(r["fractions"]), [v["diff"] for v in r["fractions"].values()])
                  for name, r in results.items()}
        self.figure("diffroar", line_plot(curves, self.figures_dir / "diffroar.png", "fraction k of coordinates kept",
                                          "DiffROAR(k) = acc(top-k) − acc(bottom-k)"))
        return {name: {"fractions": {str(k): v for k, v in r["fractions"].items()}, "mean": r["mean"],
                       "runs": r["runs"]} for name, r in results.items()}

    def lossgrad(self):
        shown = sample_per_class(self.data.test_labels, self.options.visual_samples)
        images, labels = self.data.test_images[shown], self.data.test_labels[shown]
        rows = [("input", images)]
        rows += [(name, gradient_display(loss_gradients(model, images, labels, self.options.batch_size)))
                 for name, model in self.models.items()]
        self.figure("lossgrad", image_grid(rows, self.figures_dir / "loss_gradients.png",
                                           title="∇ₓ CE, clipped to mean ± 3σ, rescaled to [0, 1]"))
        return {"images": len(shown)}

    def epg(self):
        has_box = self.data.box_masks.flatten(1).any(dim=1)
        images, labels, masks = (self.data.test_images[has_box], self.data.test_labels[has_box],
                                 self.data.box_masks[has_box])
        results = {}
        for name in self.models:
            maps = (self.test_saliency(name).sum(dim=1)[has_box] if self.options.explainer == "saliency"
                    else self.explanations(name, images, labels))
            results[name] = {"epg": float(energy_pointing_game(maps, masks).mean()),
                             "iou": float(box_iou(maps, masks, self.options.iou_threshold).mean()),
                             "images": int(has_box.sum()), "explainer": self.options.explainer}
        return results

    def shift(self):
        o = self.options
        chosen = sample_per_class(self.data.test_labels, o.shift_images)
        images, labels = self.data.test_images[chosen], self.data.test_labels[chosen]
        results = {}
        for name in self.models:
            curve = shift_equivariance(lambda x, y, name=name: self.explanations(name, x, y), images, labels,
                                       o.max_shift)
            results[name] = {"shifts": curve["shifts"], "cosine": curve["cosine"], "images": len(chosen),
                             "explainer": o.explainer}
        curves = {name: (r["shifts"], r["cosine"]) for name, r in results.items()}
        self.figure("shift", line_plot(curves, self.figures_dir / "shift.png", "diagonal shift (pixels)",
                                       "cosine similarity to the unshifted explanation"))
        return results

    # --- driver

    def run(self, metrics=METRICS, explicit=False, sources=None):
        metrics, skipped = plan_metrics(list(metrics), self.data, self.teacher, explicit)
        self.out.mkdir(parents=True, exist_ok=True)
        self.logits = {name: predict_logits(model, self.data.test_images) for name, model in self.models.items()}
        results = {
            "data": {"name": self.data.name, "test_images": len(self.data.test_labels),
                     "train_images": None if self.data.train_images is None else len(self.data.train_labels),
                     "image_size": list(self.data.test_images.shape[-2:]), "num_classes": self.data.num_classes},
            "models": {name: {"source": str((sources or {}).get(name, "")),
                              "accuracy": float((self.logits[name].argmax(1) == self.data.test_labels).double().mean())}
                       for name in self.models},
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.options).items()},
            "metrics": {},
            "skipped": skipped,
        }
        for metric in metrics:
            results["metrics"][metric] = getattr(self, metric)()
        results["figures"] = self.figures
        (self.out / "results.json").write_text(json.dumps(results, indent=2))
        write_report(results, self.out / "report.html")
        return results
