"""Measures taken on every run's checkpoint, plugged in by name.

    from kdfast.study.measures import register_measure

    @register_measure("my_measure", defaults={"limit": None}, needs_teacher=False, applies=None,
                      columns=("my_metric",))
    def my_measure(ctx, options):            # ctx: MeasureContext, options: defaults updated by the study's
        acc = ...                            # measures.my_measure mapping (unknown keys are an error)
        return [{"metric": "my_metric", "value": acc}]   # optional keys: layer, quantile, iou_threshold, category

A measure returns rows (one number each); the study writes them to <run>/measures/<name>.json and into the tidy
CSV. `check(options, models)` (optional) runs before any training, on {run id: nn.Module with the run's
architecture}, and raises StudyError for options that cannot work (e.g. a layer that does not exist).
`needs_teacher`: not taken on teachers, and a trained student without a teacher is an error before training;
`applies(run) -> bool`: the runs it is taken on (others show 'n/a' in tables); `columns`: the metrics the default
table shows.
"""
import dataclasses
import math
from pathlib import Path

import torch

from kdfast.study import models as study_models
from kdfast.study.schema import StudyError, hint


@dataclasses.dataclass(frozen=True)
class Measure:
    name: str
    compute: object  # (MeasureContext, options) -> [row dicts]
    defaults: dict
    check: object = None  # (options, {run id: nn.Module}) -> None, raises StudyError
    needs_teacher: bool = False  # not taken on teachers; a student without a teacher is an error
    applies: object = None  # (Run) -> bool: runs the measure is not taken on show 'n/a' (None: all runs)
    columns: tuple = ()  # metric names the default table shows

    def applies_to(self, run):
        if self.needs_teacher and run.role == "teacher":
            return False
        return self.applies is None or bool(self.applies(run))


MEASURES = {}


def register_measure(name, defaults=None, check=None, needs_teacher=False, applies=None, columns=(), replace=False):
    """Decorator registering `compute(ctx, options) -> rows` under `name` (see the module docstring)."""
    def decorate(compute):
        if name in MEASURES and not replace:
            raise ValueError(f"measure '{name}' is already registered (pass replace=True to replace it)")
        MEASURES[name] = Measure(name, compute, dict(defaults or {}), check, needs_teacher, applies, tuple(columns))
        return compute
    return decorate


def get_measure(name, where=None):
    if name not in MEASURES:
        raise StudyError(f"{where or 'measures'}.{name}: unknown measure.{hint(name, MEASURES)} "
                         f"Known measures: {', '.join(sorted(MEASURES))}")
    return MEASURES[name]


def resolve_options(name, options):
    """The measure's defaults updated by the study's options; unknown option keys raise StudyError."""
    measure = get_measure(name)
    for key in options:
        if key not in measure.defaults:
            raise StudyError(f"measures.{name}.{key}: unknown option.{hint(key, measure.defaults)} Options of "
                             f"'{name}': {', '.join(measure.defaults) or 'none'}")
    return {**measure.defaults, **options}


class MeasureContext:
    """What a measure may ask about one run: the run, its checkpoint, its models and its data (loaded once)."""

    def __init__(self, run, folder, device="cpu", teacher_run=None):
        self.run, self.folder, self.device, self.teacher_run = run, Path(folder), device, teacher_run
        self._student = None
        self._data = {}
        self._logits = {}

    def student(self):
        """(the student, taking [0, 1] images; the checkpoint's CheckpointInfo or None)."""
        if self._student is None:
            module, info = study_models.checkpoint_student(self.run.checkpoint, self.run.model, self.run.kwargs)
            self._student = (study_models.normalised(module, info).to(self.device), info)
        return self._student

    def config(self):
        """The checkpoint's training config (a dict; {} for a plain state dict)."""
        return study_models.config_of(self.student()[1])

    def teacher(self):
        """The teacher (taking [0, 1] images) the run was trained with, else the study's teacher checkpoint."""
        teacher = study_models.checkpoint_teacher(self.student()[1], self.data().num_classes)
        if teacher is None and self.teacher_run is not None:
            module, info = study_models.checkpoint_student(self.teacher_run.checkpoint, self.teacher_run.model,
                                                           self.teacher_run.kwargs)
            teacher = study_models.normalised(module, info)
        if teacher is None:
            raise ValueError(f"run {self.run.id} has no teacher (none in its checkpoint's config, none in the study)")
        return teacher.to(self.device)

    def data(self, test_limit=None, train_limit=None, seed=0):
        """EvalData of the run's validation (test) and training images (kdfast.evaluate)."""
        from kdfast.evaluate.sources import data_of_run

        key = (test_limit, train_limit, seed)
        if key not in self._data:
            if not self.config().get("data"):
                raise ValueError(f"{self.run.checkpoint}: the checkpoint names no training data; cannot evaluate it")
            self._data[key] = data_of_run(self.config(), test_limit=test_limit, train_limit=train_limit, seed=seed)
        return self._data[key]

    def logits(self, model_name, model, limit=None):
        from kdfast.metrics.retrain import predict_logits

        key = (model_name, limit)
        if key not in self._logits:
            self._logits[key] = predict_logits(model, self.data(limit).test_images.to(self.device)).cpu()
        return self._logits[key]


# ---------------------------------------------------------------------------------------------------------
# Built-in measures


@register_measure("training", defaults={}, applies=lambda run: run.trained)
def training(ctx, options):
    """The trainer's own validation numbers at the best epoch (<run>/train/summary.json: the whole validation
    set, streamed): val_acc, and val_agreement when the run had a teacher. Trained runs only."""
    from kdfast.study.runner import read_json

    summary = read_json(ctx.folder / "train" / "summary.json")
    if summary is None:
        raise ValueError(f"run {ctx.run.id} was not trained by the study (no train/summary.json); use 'accuracy'")
    rows = [{"metric": "val_acc", "value": float(summary["best_val_acc"])}]
    if summary.get("best_val_agreement") is not None:
        rows.append({"metric": "val_agreement", "value": float(summary["best_val_agreement"])})
    return rows


@register_measure("accuracy", defaults={"limit": None})
def accuracy(ctx, options):
    """Top-1 accuracy on the run's validation images (`limit`: a seeded subset of that many)."""
    logits = ctx.logits("student", ctx.student()[0], options["limit"])
    labels = ctx.data(options["limit"]).test_labels
    return [{"metric": "accuracy", "value": float((logits.argmax(1) == labels).double().mean())}]


@register_measure("agreement", defaults={"limit": None}, needs_teacher=True)
def agreement(ctx, options):
    """Top-1 agreement with the teacher on the run's validation images."""
    from kdfast.metrics.agreement import top1_agreement

    student = ctx.logits("student", ctx.student()[0], options["limit"])
    teacher = ctx.logits("teacher", ctx.teacher(), options["limit"])
    return [{"metric": "agreement", "value": float(top1_agreement(student, teacher))}]


def _layer_names(module):
    return [name for name, _ in module.named_modules() if name]


def check_dissection(options, architectures):
    """Before training: the Broden folder exists and every layer exists in every run's model."""
    broden = options["broden"]
    if broden not in (None, "world") and not Path(broden).is_dir():
        raise StudyError(f"measures.dissect.broden: {broden} is not a folder (a Broden directory such as "
                         "broden1_224; null for the small synthetic one, 'world' for the synthetic world's)")
    for run_id, module in architectures.items():
        names = _layer_names(module)
        for layer in options["layers"]:
            if layer not in names:
                tops = [n for n in names if "." not in n]
                raise StudyError(f"measures.dissect.layers: layer '{layer}' does not exist in run {run_id}'s model."
                                 f"{hint(layer, names)} Its top-level modules: {', '.join(tops)}")


def swept(options, name):
    """The sorted values a dissection takes of `name` ('quantile' or 'iou_threshold'): its list option
    `<name>s` plus the primary `<name>` when set."""
    return sorted(set(options[name + "s"]) | ({options[name]} - {None}))


def primary(options, name):
    """The value of `name` ('quantile' or 'iou_threshold') the tables use: the option itself when set, else the
    first of its list option `<name>s`."""
    return options[name] or options[name + "s"][0]


def _broden(choice):
    if choice == "world":
        from kdfast.data.synthetic_world import world_broden

        return str(world_broden())
    return choice


@register_measure("dissect", check=check_dissection, defaults={
    "layers": ["layer4"], "quantiles": [0.005], "quantile": None, "iou_thresholds": [0.05], "iou_threshold": None,
    "broden": None,
    "categories": None, "denominator": "lite", "batch_size": 32, "top_images": 5, "activation_cache_gb": 2.0})
def dissect(ctx, options):
    """Network dissection of the run's student (kdfast.dissect) into <run>/dissect/: detectors and distinct
    concepts per layer × quantile × IoU threshold × category (and 'all'). `quantile` and `iou_threshold` are
    the primary values the tables use (default: the first of `quantiles` / `iou_thresholds`)."""
    from kdfast.dissect import DissectConfig
    from kdfast.dissect import dissect as run_dissection

    info = ctx.student()[1]
    mean, std = study_models.normalisation(info)
    iou_thresholds = tuple(swept(options, "iou_threshold"))
    out = ctx.folder / "dissect"
    result = run_dissection(DissectConfig(
        model=info.spec if info is not None else ctx.run.model,
        weights=str(ctx.run.checkpoint), layers=tuple(options["layers"]), broden=_broden(options["broden"]),
        out=str(out), quantiles=tuple(swept(options, "quantile")),
        iou_threshold=primary(options, "iou_threshold"), iou_thresholds=iou_thresholds,
        categories=options["categories"], mean=mean, std=std, denominator=options["denominator"],
        device="cuda" if str(ctx.device).startswith("cuda") else "cpu", batch_size=options["batch_size"],
        top_images=options["top_images"], activation_cache_gb=options["activation_cache_gb"], progress=False))
    rows = []
    for layer, tallies in result.tallies.items():
        for tally in tallies:
            labels = tally.unit_labels()
            for threshold in iou_thresholds:
                found = tally.detectors(threshold, labels)
                where = {"layer": layer, "quantile": tally.quantile, "iou_threshold": threshold}
                names = tally.concepts.categories
                for category in names:
                    in_category = [u for u in found.units if names[u.category] == category]
                    rows.append({**where, "category": category, "metric": "detectors", "value": len(in_category)})
                    rows.append({**where, "category": category, "metric": "concepts",
                                 "value": len({u.label for u in in_category})})
                rows.append({**where, "category": "all", "metric": "detectors", "value": found.total})
                rows.append({**where, "category": "all", "metric": "concepts", "value": found.unique})
            rows.append({"layer": layer, "quantile": tally.quantile, "category": "all", "metric": "units",
                         "value": tally.units})
    return rows


def _flatten(value, prefix):
    """{dotted name: number} of the numbers in a nested result (lists indexed)."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)} if math.isfinite(float(value)) else {prefix: float("nan")}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    flat = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}.{key}"))
    return flat


def _evaluate_metric(metric):
    """A measure running one kdfast.evaluate metric on the run alone; its numbers become `metric.<path>` rows."""
    def compute(ctx, options):
        from kdfast.evaluate import EvalOptions, Evaluation

        data = ctx.data(options["limit"], options["train_limit"], options["seed"])
        eval_options = EvalOptions(**{**options["options"], "seed": options["seed"]})
        teacher = ctx.teacher() if metric == "agreement" else None
        evaluation = Evaluation({ctx.run.id: ctx.student()[0]}, data, ctx.folder / "evaluate" / metric, teacher,
                                eval_options)
        result = evaluation.run([metric], explicit=True)["metrics"][metric]
        own = result.get("models", result).get(ctx.run.id, result) if isinstance(result, dict) else result
        return [{"metric": name, "value": value} for name, value in sorted(_flatten(own, metric).items())]
    return compute


# The default table's columns of the evaluate metrics (the others are curves and figures: see results.csv).
EVALUATE_COLUMNS = {"entropy": ("entropy.entire", "entropy.category"), "diffroar": ("diffroar.mean",),
                    "epg": ("epg.epg", "epg.iou")}


def _register_evaluate_metrics():
    from kdfast.evaluate.pipeline import METRICS

    for metric in METRICS:
        if metric not in MEASURES:  # 'agreement' is the measure above
            register_measure(metric, defaults={"limit": None, "train_limit": None, "seed": 0, "options": {}},
                             columns=EVALUATE_COLUMNS.get(metric, ()))(_evaluate_metric(metric))


_register_evaluate_metrics()


def device_of(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
