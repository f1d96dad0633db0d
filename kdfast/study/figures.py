"""The study's figures (matplotlib, PNG): a group without results keeps its slot, marked "no result" (and ×
on the axis); a group where only n of its N runs have results says "(n/N runs)" in the legend.

* detectors_per_category_<layer>.png — Fig. 2: detectors per Broden category, one bar per group (mean, error
  bar = std over seeds);
* sweep_quantile_<layer>.png, sweep_iou_<layer>.png — Figs. 9/10: total detectors against the quantile (at the
  primary IoU threshold) and against the IoU threshold (at the first quantile), mean line with a ± std band;
* accuracy.png — accuracy and agreement per group (mean, error bar = std): the trainer's (val_acc,
  val_agreement) and/or the measured ones (accuracy, agreement).
"""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kdfast.study.measures import resolve_options, swept  # noqa: E402
from kdfast.study.tables import dissect_defaults, find_stat, groups_in_order  # noqa: E402

NO_RESULT = "no result"


def _zero_nan(value):
    return 0.0 if value is None or math.isnan(value) else value


def _bars(ax, groups, categories, lookup):
    """Grouped bars: x = categories, one bar per group; groups without any value get a 'no result' label."""
    width = 0.8 / max(len(groups), 1)
    for g, group in enumerate(groups):
        stats = [lookup(group, c) for c in categories]
        has = any(s is not None for s in stats)
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(categories))]
        means = [_zero_nan(s["mean"]) if s else 0.0 for s in stats]
        errs = [_zero_nan(s["std"]) if s else 0.0 for s in stats]
        label = group if has else f"{group} ({NO_RESULT})"
        partial = [s for s in stats if s is not None and s["n"] < s["expected"]]
        if partial:  # some runs failed or are missing: say how many the bars stand on
            label += f" ({min(s['n'] for s in partial)}/{partial[0]['expected']} runs)"
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=label, hatch=None if has else "//", edgecolor="grey")
        for x, s in zip(xs, stats):
            if s is None:
                ax.text(x, 0, "×", ha="center", va="bottom", color="red", fontsize=8)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=30, ha="right")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: no search for a spot


def detectors_per_category(study, runs, stats, folder):
    defaults = dissect_defaults(study)
    categories = sorted({k[5] for k in stats if k[1] == "dissect" and k[6] == "detectors" and k[5] != "all"})
    made = []
    groups = groups_in_order(runs)
    for layer in defaults["layers"]:
        fig, ax = plt.subplots(figsize=(max(6, len(categories) * 1.2), 4))
        column = {"metric": "detectors", "layer": layer, "quantile": defaults["quantile"],
                  "iou_threshold": defaults["iou_threshold"]}
        _bars(ax, groups, categories + ["all"], lambda g, c: find_stat(stats, g, {**column, "category": c}))
        ax.set_ylabel("detectors (mean ± std over seeds)")
        ax.set_title(f"{study.name}: {layer}, quantile {defaults['quantile']}, IoU ≥ {defaults['iou_threshold']}")
        made.append(_save(fig, folder / f"detectors_per_category_{layer}.png"))
    return made


def _sweep(ax, groups, xs, lookup):
    for group in groups:
        points = [(x, lookup(group, x)) for x in xs]
        found = [(x, s) for x, s in points if s is not None]
        if not found:
            ax.plot([], [], label=f"{group} ({NO_RESULT})")
            continue
        x = [p[0] for p in found]
        mean = [s["mean"] for _, s in found]
        std = [_zero_nan(s["std"]) for _, s in found]
        line, = ax.plot(x, mean, marker="o", label=group)
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.2)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: no search for a spot


def sweeps(study, runs, stats, folder):
    options = resolve_options("dissect", study.measures["dissect"])
    defaults = dissect_defaults(study)
    quantiles = swept(options, "quantile")
    thresholds = swept(options, "iou_threshold")
    groups = groups_in_order(runs)
    made = []
    for layer in options["layers"]:
        base = {"metric": "detectors", "layer": layer, "category": "all"}
        if len(quantiles) > 1:
            fig, ax = plt.subplots(figsize=(6, 4))
            _sweep(ax, groups, quantiles, lambda g, q: find_stat(
                stats, g, {**base, "quantile": q, "iou_threshold": defaults["iou_threshold"]}))
            ax.set_xlabel("quantile")
            ax.set_ylabel("detectors")
            ax.set_title(f"{layer}: detectors vs quantile (IoU ≥ {defaults['iou_threshold']})")
            made.append(_save(fig, folder / f"sweep_quantile_{layer}.png"))
        if len(thresholds) > 1:
            fig, ax = plt.subplots(figsize=(6, 4))
            _sweep(ax, groups, thresholds, lambda g, t: find_stat(
                stats, g, {**base, "quantile": defaults["quantile"], "iou_threshold": t}))
            ax.set_xlabel("IoU threshold")
            ax.set_ylabel("detectors")
            ax.set_title(f"{layer}: detectors vs IoU threshold (quantile {defaults['quantile']})")
            made.append(_save(fig, folder / f"sweep_iou_{layer}.png"))
    return made


def accuracy(study, runs, stats, folder):
    metrics = [m for m in ("accuracy", "agreement") if m in study.measures]
    if "training" in study.measures:
        metrics = ["val_acc", "val_agreement"] + metrics
    fig, ax = plt.subplots(figsize=(max(6, len(groups_in_order(runs)) * 0.9), 4))

    def lookup(group, metric):
        stat = find_stat(stats, group, {"metric": metric})
        return None if stat is None else {**stat, "mean": 100 * stat["mean"], "std": 100 * stat["std"]}

    _bars(ax, groups_in_order(runs), metrics, lookup)
    ax.set_ylabel("% (mean ± std over seeds)")
    ax.set_title(f"{study.name}: accuracy and agreement with the teacher")
    return [_save(fig, folder / "accuracy.png")]


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_figures(study, runs, stats, folder):
    """Paths of the figures the study asks for and has the measures for."""
    made = []
    if "detectors_per_category" in study.figures and "dissect" in study.measures:
        made += detectors_per_category(study, runs, stats, folder)
    if "sweeps" in study.figures and "dissect" in study.measures:
        made += sweeps(study, runs, stats, folder)
    if "accuracy" in study.figures and ({"accuracy", "agreement", "training"} & set(study.measures)):
        made += accuracy(study, runs, stats, folder)
    return made
