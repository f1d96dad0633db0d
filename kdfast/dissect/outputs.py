"""The output folder of a dissection:

    OUT/<layer>/tally.csv, summary.json, report.html, detectors.png, images/unit<N>.png   (one quantile)
    OUT/<layer>/q<quantile>/... (the same, per quantile)  + OUT/<layer>/report.html      (several quantiles)
    OUT/<layer>/sweep.csv, sweep.png                     (several quantiles or IoU thresholds)
"""
from pathlib import Path

import torch

from kdfast.dissect import report
from kdfast.dissect.config import format_value
from kdfast.dissect.results import summary, sweep_rows, write_json, write_sweep_csv, write_tally_csv


def quantile_folder_name(quantile):
    return f"q{format_value(quantile)}"


def top_images(maxima, unit, count):
    """The `count` images where `unit` peaks highest (ties: lower image index first)."""
    order = torch.argsort(maxima[:, unit], descending=True, stable=True)
    return order[:count].tolist()


def write_outputs(result, dissector, packed):
    config = result.config
    out = Path(config.out)
    pages = []  # (folder, tally, detectors): reports to draw once the top images' maps are computed
    wanted = {}  # layer → unit → top image indices
    for layer, tallies in result.tallies.items():
        layer_folder = out / layer
        for tally in tallies:
            folder = layer_folder / quantile_folder_name(tally.quantile) if config.sweep else layer_folder
            folder.mkdir(parents=True, exist_ok=True)
            labels = write_tally_csv(folder / "tally.csv", tally)
            found = tally.detectors(config.iou_threshold, labels)
            write_json(folder / "summary.json", summary(tally, found, config.model, result.images))
            pages.append((folder, tally, found))
            for unit in found.units:
                wanted.setdefault(layer, {})[unit.unit] = top_images(result.maxima[layer], unit.unit, config.top_images)
        if config.sweep or len(config.iou_thresholds) > 1:
            rows = sweep_rows(tallies, config.iou_thresholds)
            write_sweep_csv(layer_folder / "sweep.csv", rows, list(result.concepts.categories))
            report.sweep_figure(layer_folder / "sweep.png", rows, f"{layer}: concept detectors")
            if config.sweep:
                folders = {t.quantile: quantile_folder_name(t.quantile) for t in tallies}
                report.write_sweep_report(layer_folder / "report.html", layer, rows,
                                          list(result.concepts.categories), folders)
    maps = dissector.unit_maps(wanted)
    for folder, tally, found in pages:
        report.write_report(folder, tally, found, config.model, result.images, maps.get(tally.layer, {}),
                            wanted.get(tally.layer, {}), packed.image)
