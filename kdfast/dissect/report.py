"""report.html pages with matplotlib figures: detectors per category (the ICML paper's Fig. 2), detector units
per concept (NetDissect-Lite's bar graph), every unit by IoU with its top images and thresholded mask, and the
quantile / IoU-threshold sweep (Figs. 9–10).

The unit strips are drawn from the maps kept during pass 1 (no forward pass here), upsampled in the tally
kernels' arithmetic to the segmentation size, so a strip shows exactly the pixels the tally counted; strips are
JPEGs encoded on a thread pool (PIL and torch release the GIL while they work).
"""
import html
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from kdfast.dissect.config import format_value
from kdfast.ops.iou_tally import bilinear_source_index

_STYLE = """<style>
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { padding: 0.3em 0.6em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }
img.strip { height: 130px; }
.meta { color: #555; }
tr.below { color: #888; }
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


_UNITS_PER_TASK = 32
EDGE = (255, 220, 0)  # the mask's inner edge
RIM = (0, 0, 0)  # the ring just outside it: with the yellow edge, visible on dark and on yellow images


def upsample_maps(maps, size):
    """(n, h, w) float maps → float64 (n, size[0], size[1]): bilinear, half-pixel centres, in the tally kernels'
    arithmetic (the values of upsample_reference), done separably: each row along x, then along y,
    a + t·(b − a) per axis — exactly upsample_reference's order (it interpolates the two source rows along x,
    then between them), without its 2-D gathers."""
    maps = maps.double()
    h, w = maps.shape[-2:]
    x0, x1, tx = bilinear_source_index(size[1], w)
    left = maps[..., x0]
    columns = maps[..., x1].sub_(left).mul_(tx).add_(left)  # (n, h, sw); in place: the same a + t·(b − a)
    y0, y1, ty = bilinear_source_index(size[0], h)
    top = columns[..., y0, :]
    return columns[..., y1, :].sub_(top).mul_(ty[:, None]).add_(top)


def _ring(mask):
    """Pixels of `mask` (..., h, w) with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[..., 1:, :] &= mask[..., :-1, :]
    inner[..., :-1, :] &= mask[..., 1:, :]
    inner[..., :, 1:] &= mask[..., :, :-1]
    inner[..., :, :-1] &= mask[..., :, 1:]
    return mask & ~inner


def overlay(image, mask):
    """uint8 (..., ih, iw, 3): outside `mask` (..., ih, iw) the image darkened to a quarter, the mask's edge
    yellow, the ring around it black."""
    out = np.where(mask[..., None], image, image >> 2)  # image >> 2 == floor(image / 4) for uint8
    out[_ring(~mask)] = RIM
    out[_ring(mask)] = EDGE
    return out


def mask_overlay(image, unit_map, threshold):
    """overlay() of the unit's mask: its (h, w) map upsampled to the image size, > threshold (ties inactive)."""
    up = upsample_maps(unit_map[None], image.shape[:2])[0]
    return overlay(image, (up > float(threshold)).numpy())


_FONT = None


def _font():
    global _FONT
    if _FONT is None:
        _FONT = ImageFont.load_default(size=12)
    return _FONT


def unit_masks(maps, thresholds, tile_size):
    """Per unit: bool (n, th, tw), its (n, h, w) maps upsampled to tile_size > its threshold (ties inactive).
    All units' maps go through one batched upsample_maps call (the per-map values are the same)."""
    counts = [m.shape[0] for m in maps]
    if not sum(counts):
        return [np.zeros((0, *tile_size), dtype=bool) for _ in maps]
    per_map = torch.repeat_interleave(torch.tensor([float(t) for t in thresholds], dtype=torch.float64),
                                      torch.tensor(counts))
    masks = (upsample_maps(torch.cat(maps), tile_size) > per_map.view(-1, 1, 1)).numpy()
    return np.split(masks, np.cumsum(counts)[:-1])


class Tiles:
    """Images at the tile size, each loaded and resized once however many units show it (thread-safe enough:
    two threads may both resize an image, and either result is the same)."""

    def __init__(self, load_image, tile_size):
        self.load_image, self.tile_size, self.cache = load_image, tile_size, {}

    def __getitem__(self, index):
        tile = self.cache.get(index)
        if tile is None:
            tile = self.load_image(index)
            th, tw = self.tile_size
            if tile.shape[:2] != (th, tw):
                tile = np.asarray(Image.fromarray(tile).resize((tw, th), Image.BILINEAR))
            self.cache[index] = tile
        return tile


def unit_strip(path, tiles, masks, caption, gap=4, band=18):
    """One JPEG: a caption band, then the unit's top images (uint8 (th, tw, 3) each) side by side, each with
    its mask (bool (th, tw)) overlaid."""
    th, tw = masks.shape[1:]
    width = max(1, len(tiles) * (tw + gap) - gap)
    strip = np.full((band + th, width, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(overlay(np.stack(tiles), masks) if len(tiles) else ()):
        strip[band:, k * (tw + gap): k * (tw + gap) + tw] = tile
    picture = Image.fromarray(strip)
    ImageDraw.Draw(picture).text((2, 2), caption, fill=(0, 0, 0), font=_font())
    picture.save(path, quality=90)


def concept_figure(path, found, concepts, title):
    """NetDissect-Lite's bar graph: detector units per concept, grouped and coloured by category."""
    per_label = {}
    for unit in found.units:
        per_label[unit.label] = per_label.get(unit.label, 0) + 1
    order = sorted(per_label, key=lambda label: (concepts.label_category[label], -per_label[label],
                                                 concepts.label_names[label]))
    palette = colormaps["tab10"]
    fig = Figure(figsize=(min(40.0, max(4.0, 1.5 + 0.28 * len(order))), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(order))
    ax.bar(x, [per_label[label] for label in order],
           color=[palette(int(concepts.label_category[label]) % 10) for label in order])
    ax.set_xticks(x, [concepts.label_names[label] for label in order], rotation=90, fontsize="small")
    for c, name in enumerate(concepts.categories):
        ax.bar(0, 0, color=palette(c % 10), label=name)  # legend entries only
    ax.set_ylabel("detector units")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(folder, tally, labels, found, model, image_count, top, load_image, tile_size):
    """folder/report.html (+ detectors.png, concepts.png and images/unit<N>.jpg strips) for one layer at one
    quantile: every unit, best IoU first (as tally.csv), detectors marked.

    labels: every unit's UnitLabel; top = (per unit: top image indices, per unit: (n, h, w) maps on them);
    load_image(i) → uint8 (ih, iw, 3); tile_size: (h, w) of the drawn images (the segmentation size).
    """
    categories = list(tally.concepts.categories)
    names = tally.concepts.label_names
    t = format_value(found.iou_threshold)
    headline = f"{found.total}/{tally.units} units covering {found.unique} concepts with IoU ≥ {t}"
    detector_figure(folder / "detectors.png", found, categories, f"{tally.layer}: {headline}")
    concepts_png = folder / "concepts.png"
    concepts_png.unlink(missing_ok=True)
    if found.units:
        concept_figure(concepts_png, found, tally.concepts, f"{tally.layer}: detector units per concept")
    strips = folder / "images"
    strips.mkdir(exist_ok=True)
    for stale in [*strips.glob("unit*.png"), *strips.glob("unit*.jpg")]:  # from an earlier run into the folder
        stale.unlink()
    indices, maps = top
    ordered = sorted(labels, key=lambda u: (-u.score, u.unit))

    tiles = Tiles(load_image, tile_size)

    def draw(units):
        masks = unit_masks([maps[u.unit] for u in units], [tally.thresholds[u.unit] for u in units], tile_size)
        for unit, unit_mask in zip(units, masks):
            caption = (f"unit {unit.unit + 1}  {names[unit.label]} ({categories[unit.category]})  "
                       f"IoU {unit.score:.3f}")
            unit_strip(strips / f"unit{unit.unit + 1:04d}.jpg", [tiles[i] for i in indices[unit.unit]], unit_mask,
                       caption)

    # Chunks of units: one batched upsample per chunk, chunks drawn in parallel.
    chunks = [ordered[i: i + _UNITS_PER_TASK] for i in range(0, len(ordered), _UNITS_PER_TASK)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(draw, chunks))
    rows = []
    for unit in ordered:
        name = f"unit{unit.unit + 1:04d}.jpg"
        below = "" if unit.score >= found.iou_threshold else " class='below'"
        rows.append(
            f"<tr{below}><td>{unit.unit + 1}</td><td>{html.escape(names[unit.label])}</td>"
            f"<td>{html.escape(categories[unit.category])}</td><td>{unit.score:.4f}</td>"
            f"<td><img class='strip' src='images/{name}' alt='top images of unit {unit.unit + 1}'></td></tr>"
        )
    shown = len(indices[0]) if indices else 0
    listing = ("<table><tr><th>unit</th><th>label</th><th>category</th><th>IoU</th>"
               f"<th>top {shown} images (mask: activation &gt; T<sub>u</sub>, at the segmentation size)"
               "</th></tr>\n" + "\n".join(rows) + "\n</table>")
    figures = "<img src='detectors.png' alt='detectors per category'>\n"
    if found.units:
        figures += "<img src='concepts.png' alt='detector units per concept'>\n"
    else:
        figures += f"<p>No unit reached IoU ≥ {t}.</p>\n"
    body = (
        f"<h1>{html.escape(tally.layer)}: {headline}</h1>\n"
        f"<p class='meta'>model {html.escape(model)} · {image_count} images · "
        f"quantile {format_value(tally.quantile)} · denominator {tally.denominator} · "
        "unit numbers are 1-based as in tally.csv · every unit, best IoU first; grey rows are below the "
        f"IoU threshold {t}</p>\n{figures}{listing}"
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

