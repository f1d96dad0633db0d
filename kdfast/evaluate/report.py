"""An HTML page comparing the evaluated models side by side: one table per metric (models as columns) and the
figures, linked relative to the report so the output folder can be moved as a whole."""
import html

from kdfast.metrics.plots import RADAR_AXES, radar_values

FIGURE_TITLES = {
    "radar": "Binary splits of the ground truth (ICML Fig. 6; * = max over threshold steps)",
    "saliency": "Saliency maps (ICML Fig. 7)",
    "lossgrad": "Loss gradients (ICML Fig. 8)",
    "diffroar": "DiffROAR per fraction kept (ICML Table 4)",
    "shift": "Shift equivariance of explanations (ECCV Fig. 4, centre)",
}


def _cell(value):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(title, models, rows, note=None):
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    body = "".join(f"<tr><th>{html.escape(label)}</th>{''.join(f'<td>{_cell(v)}</td>' for v in values)}</tr>"
                   for label, values in rows)
    note = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return f"<h2>{html.escape(title)}</h2>{note}<table><tr><th></th>{head}</tr>{body}</table>"


def _sections(results):
    models = list(results["models"])
    metrics = results["metrics"]
    yield _table("Accuracy", models, [("top-1 accuracy", [results["models"][m]["accuracy"] for m in models])])
    if "agreement" in metrics:
        yield _table("Top-1 agreement with the teacher", models,
                     [("agreement", [metrics["agreement"][m] for m in models])])
    if "entropy" in metrics:
        e = metrics["entropy"]
        yield _table("Entropy in nats (ICML Table 2)", models,
                     [("entire", [e["models"][m]["entire"] for m in models]),
                      ("category", [e["models"][m]["category"] for m in models])],
                     note=f"Averaged over the {e['samples']} test images that every model classifies correctly and "
                          "whose class has a category.")
    if "fiveband" in metrics:
        bands = metrics["fiveband"]["bands"]
        rows = [(f"{score} ({stat})", [bands[m][score][stat] for m in models])
                for score in ("pixel_accuracy", "recall", "precision", "fpr") for stat in ("mean", "max")]
        yield _table("Five-band scores (ICML Table 3)", models, rows,
                     note="Mean and max over the threshold steps; FPR: lower is better.")
        splits = metrics["fiveband"]["binary_splits"]
        for split in next(iter(splits.values())):
            rows = [(label, [radar_values(splits[m][split])[i] for m in models])
                    for i, (label, _, _) in enumerate(RADAR_AXES)]
            excluded = splits[models[0]][split]["excluded"]
            yield _table(f"Binary split {split}", models, rows,
                         note=f"{excluded} images without both classes of the split (e.g. the empty class) excluded.")
    if "diffroar" in metrics:
        d = metrics["diffroar"]
        fractions = list(d[models[0]]["fractions"])
        rows = [(f"k = {k}", [d[m]["fractions"][k]["diff"] for m in models]) for k in fractions]
        rows.append(("mean", [d[m]["mean"] for m in models]))
        yield _table("DiffROAR (ICML Table 4)", models, rows, note=f"{d[models[0]]['runs']} run(s) per k.")
    if "epg" in metrics:
        g = metrics["epg"]
        yield _table("Localisation against boxes (ECCV)", models,
                     [("EPG", [g[m]["epg"] for m in models]), ("IoU", [g[m]["iou"] for m in models])],
                     note=f"{g[models[0]]['explainer']} explanations on {g[models[0]]['images']} images with boxes.")
    if "shift" in metrics:
        s = metrics["shift"]
        rows = [(f"shift {t}", [s[m]["cosine"][i] for m in models]) for i, t in enumerate(s[models[0]]["shifts"])]
        yield _table("Shift equivariance: cosine to the unshifted explanation", models, rows)
    if results["skipped"]:
        items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in results["skipped"].items())
        yield f"<h2>Skipped metrics</h2><ul>{items}</ul>"
    for key, path in results["figures"].items():
        yield (f"<h2>{html.escape(FIGURE_TITLES.get(key, key))}</h2>"
               f"<img src='{html.escape(path)}' alt='{html.escape(key)}'>")


def write_report(results, path):
    sources = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(v['source'])}</li>"
                      for m, v in results["models"].items())
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>kdfast evaluation</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}"
        ".note{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #eee}</style></head><body>"
        f"<h1>kdfast evaluation</h1><p>Data: {html.escape(results['data']['name'])} — "
        f"{results['data']['test_images']} test images.</p><ul>{sources}</ul>"
        + "".join(_sections(results)) + "</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path
