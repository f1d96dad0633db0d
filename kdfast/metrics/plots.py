"""Figures of the evaluation: radar plots of the binary-split scores (ICML Fig. 6), image grids of inputs, ground
truth, saliency (Fig. 7) and loss gradients (Fig. 8), and line plots (DiffROAR per k, shift-equivariance curve)."""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import torch  # noqa: E402

RADAR_AXES = (("AUROC", "auroc", None), ("Precision", "precision", "mean"), ("Recall", "recall", "mean"),
              ("F1", "f1", "mean"), ("Precision*", "precision", "max"), ("Recall*", "recall", "max"),
              ("F1*", "f1", "max"))
SPLIT_TITLES = {"0|12": "class 0 vs classes 1, 2", "01|2": "classes 0, 1 vs class 2"}


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def radar_values(scores):
    """The radar's values for one model's binary_split_scores result, in RADAR_AXES order (* = max over steps)."""
    return [scores[key] if stat is None else scores[key][stat] for _, key, stat in RADAR_AXES]


def radar_plots(split_scores, path):
    """One radar per split; `split_scores` = {model: {split: binary_split_scores result}}."""
    splits = list(next(iter(split_scores.values())))
    angles = [2 * math.pi * i / len(RADAR_AXES) for i in range(len(RADAR_AXES))]
    fig, axes = plt.subplots(1, len(splits), subplot_kw={"projection": "polar"}, figsize=(5 * len(splits), 5))
    for ax, split in zip(list(axes) if len(splits) > 1 else [axes], splits):
        for model, scores in split_scores.items():
            values = radar_values(scores[split])
            ax.plot(angles + angles[:1], values + values[:1], label=model)
            ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
        ax.set_xticks(angles)
        ax.set_xticklabels([label for label, _, _ in RADAR_AXES])
        ax.set_ylim(0, 1)
        ax.set_title(SPLIT_TITLES.get(split, split))
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels))
    return _save(fig, path)


def _as_image(tile):
    """(3, H, W) → (H, W, 3) array in [0, 1]; (H, W) stays a 2-D map for a colormap."""
    tile = tile.detach().float().cpu()
    return tile.permute(1, 2, 0).clamp(0, 1).numpy() if tile.dim() == 3 else tile.numpy()


def image_grid(rows, path, cmaps=None, title=None):
    """A grid with one row per (label, tiles) pair; tiles are (N, 3, H, W) images or (N, H, W) maps.

    `cmaps` maps a row label to a matplotlib colormap (and optionally value range) for 2-D maps:
    {label: (cmap, vmin, vmax)}; maps without an entry use 'viridis' scaled per tile."""
    cmaps = cmaps or {}
    columns = max(len(tiles) for _, tiles in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.7 * len(rows)), squeeze=False)
    for r, (label, tiles) in enumerate(rows):
        cmap, vmin, vmax = cmaps.get(label, ("viridis", None, None))
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(tiles):
                ax.imshow(_as_image(tiles[c]), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def line_plot(curves, path, xlabel, ylabel, title=None):
    """`curves` = {name: (xs, ys)}; one line per name."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def ground_truth_colours(ground_truth):
    """(N, H, W) classes 0/1/2 → (N, 3, H, W) white / light pink / dark pink, as the paper draws them."""
    palette = torch.tensor([[1.0, 1.0, 1.0], [0.98, 0.78, 0.84], [0.85, 0.25, 0.45]])
    return palette[ground_truth.long()].permute(0, 3, 1, 2)
