"""report.html pages with matplotlib figures: detectors per category (the ICML paper's Fig. 2), each
detector's top images with its thresholded mask, and the quantile / IoU-threshold sweep (Figs. 9–10)."""
import html

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from kdfast.dissect.config import format_value
from kdfast.ops.iou_tally import upsample_reference

_STYLE = """<style>
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { padding: 0.3em 0.6em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }
img.strip { height: 112px; }
.meta { color: #555; }
</style>"""


def _page(title, body):
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}"
            f"</head><body>\n{body}\n</body></html>\n")


def _unique_per_category(found, categories):
    labels = {name: set() for name in categories}
    for unit in found.units:
        labels[categories[unit.category]].add(unit.label)
    return [len(labels[name]) for name in categories]


def detector_figure(path, found, categories, title):
    """Bars of detector units and of distinct concepts per category."""
    x = np.arange(len(categories))
    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(categories)), 3.4))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [found.per_category[c] for c in categories], 0.4, label="detectors")
    ax.bar(x + 0.2, _unique_per_category(found, categories), 0.4, label="unique concepts")
    ax.set_xticks(x, categories)
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def sweep_figure(path, rows, title):
    """Total detectors against the quantile (one line per IoU threshold) and against the IoU threshold
    (one line per quantile)."""
    quantiles = sorted({r["quantile"] for r in rows})
    thresholds = sorted({r["iou_threshold"] for r in rows})
    total = {(r["quantile"], r["iou_threshold"]): r["total"] for r in rows}
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    for t in thresholds:
        left.plot(quantiles, [total[q, t] for q in quantiles], marker="o", label=f"IoU ≥ {format_value(t)}")
    left.set_xlabel("quantile (top fraction of activations)")
    left.set_ylabel("concept detectors")
    for q in quantiles:
        right.plot(thresholds, [total[q, t] for t in thresholds], marker="o", label=f"q = {format_value(q)}")
    right.set_xlabel("IoU threshold")
    for ax in (left, right):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def mask_overlay(image, unit_map, threshold):
    """uint8 (ih, iw, 3): the image with everything outside the unit's mask (its map upsampled bilinearly
    to the image size, > threshold) darkened and the mask's edge drawn in yellow. The upsampling rounds as
    the tally kernel does (a + t·(b − a)), so a constant map stays constant and ties stay inactive."""
    up = upsample_reference(unit_map[None, None], image.shape[:2])[0, 0]
    mask = (up > float(threshold)).numpy()
    out = np.where(mask[..., None], image, (image * 0.25).astype(np.uint8))
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    out[mask & ~inner] = (255, 220, 0)
    return out


def unit_strip(path, images, maps, threshold, gap=4):
    """One PNG of a unit's top images side by side, each with the unit's mask overlaid."""
    tiles = [mask_overlay(image, unit_map, threshold) for image, unit_map in zip(images, maps)]
    h, w = tiles[0].shape[:2]
    strip = np.full((h, len(tiles) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        strip[:, k * (w + gap): k * (w + gap) + w] = tile
    Image.fromarray(strip).save(path)


def write_report(folder, tally, found, model, image_count, unit_maps, top_images, load_image):
    """folder/report.html (+ detectors.png and images/unit<N>.png strips) for one layer at one quantile.

    unit_maps[u]: (n, h, w) maps of unit u on its top images top_images[u]; load_image(i) → uint8 (ih, iw, 3).
    """
    categories = list(tally.concepts.categories)
    t = format_value(found.iou_threshold)
    headline = f"{found.total}/{tally.units} units covering {found.unique} concepts with IoU ≥ {t}"
    detector_figure(folder / "detectors.png", found, categories, f"{tally.layer}: {headline}")
    strips = folder / "images"
    strips.mkdir(exist_ok=True)
    for stale in strips.glob("unit*.png"):  # from an earlier run into the same folder
        stale.unlink()
    rows = []
    for unit in found.units:
        name = f"unit{unit.unit + 1:04d}.png"
        unit_strip(strips / name, [load_image(i) for i in top_images[unit.unit]], unit_maps[unit.unit],
                   tally.thresholds[unit.unit])
        rows.append(
            f"<tr><td>{unit.unit + 1}</td><td>{html.escape(tally.concepts.label_names[unit.label])}</td>"
            f"<td>{html.escape(categories[unit.category])}</td><td>{unit.score:.4f}</td>"
            f"<td><img class='strip' src='images/{name}' alt='top images of unit {unit.unit + 1}'></td></tr>"
        )
    if rows:
        listing = ("<table><tr><th>unit</th><th>label</th><th>category</th><th>IoU</th>"
                   f"<th>top {len(top_images[found.units[0].unit])} images (mask: activation &gt; T<sub>u</sub>)"
                   "</th></tr>\n" + "\n".join(rows) + "\n</table>")
    else:
        listing = f"<p>No unit reached IoU ≥ {t}.</p>"
    body = (
        f"<h1>{html.escape(tally.layer)}: {headline}</h1>\n"
        f"<p class='meta'>model {html.escape(model)} · {image_count} images · "
        f"quantile {format_value(tally.quantile)} · denominator {tally.denominator} · "
        "unit numbers are 1-based as in tally.csv</p>\n"
        f"<img src='detectors.png' alt='detectors per category'>\n{listing}"
    )
    (folder / "report.html").write_text(_page(f"{tally.layer} dissection", body), encoding="utf-8")


def write_sweep_report(path, layer, rows, categories, quantile_folders):
    """The layer's sweep page: sweep.png, the sweep table and links to each quantile's own report."""
    columns = ["quantile", "IoU threshold", *categories, "unique", "total"]
    header = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    lines = []
    for r in rows:
        q = format_value(r["quantile"])
        cells = [f"<a href='{quantile_folders[r['quantile']]}/report.html'>{q}</a>", format_value(r["iou_threshold"]),
                 *(str(r["detectors"][c]) for c in categories), str(r["unique"]), str(r["total"])]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = (f"<h1>{html.escape(layer)}: detectors across quantiles and IoU thresholds</h1>\n"
            "<img src='sweep.png' alt='sweep'>\n"
            f"<table><tr>{header}</tr>\n" + "\n".join(lines) + "\n</table>")
    path.write_text(_page(f"{layer} sweep", body), encoding="utf-8")

