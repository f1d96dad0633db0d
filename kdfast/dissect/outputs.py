"""The output folder of a dissection:

    OUT/<layer>/tally.csv, summary.json, report.html, detectors.png, images/unit<N>.png   (one quantile)
    OUT/<layer>/q<quantile>/... (the same, per quantile)  + OUT/<layer>/report.html      (several quantiles)
    OUT/<layer>/sweep.csv, sweep.png                     (several quantiles or IoU thresholds)
    OUT/run.json                                         provenance: settings, weights path + sha256, versions
"""
from pathlib import Path

from kdfast.dissect import report
from kdfast.dissect.config import format_value
from kdfast.dissect.results import summary, sweep_rows, write_json, write_sweep_csv, write_tally_csv
from kdfast.provenance import provenance


def quantile_folder_name(quantile):
    return f"q{format_value(quantile)}"


def write_outputs(result, packed):
    config = result.config
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "run.json", provenance(config, config.weights))
    for layer, tallies in result.tallies.items():
        top = result.top_images[layer].lists(config.top_images)
        layer_folder = out / layer
        for tally in tallies:
            folder = layer_folder / quantile_folder_name(tally.quantile) if config.sweep else layer_folder
            folder.mkdir(parents=True, exist_ok=True)
            labels = write_tally_csv(folder / "tally.csv", tally)
            found = tally.detectors(config.iou_threshold, labels)
            write_json(folder / "summary.json", summary(tally, found, config.model, result.images))
            report.write_report(folder, tally, labels, found, config.model, result.images, top, packed.image,
                                packed.seg_size)
        if config.sweep or len(config.iou_thresholds) > 1:
            rows = sweep_rows(tallies, config.iou_thresholds)
            write_sweep_csv(layer_folder / "sweep.csv", rows, list(result.concepts.categories))
            report.sweep_figure(layer_folder / "sweep.png", rows, f"{layer}: concept detectors")
            if config.sweep:
                folders = {t.quantile: quantile_folder_name(t.quantile) for t in tallies}
                report.write_sweep_report(layer_folder / "report.html", layer, rows,
                                          list(result.concepts.categories), folders)
