"""Measures of the e2KD paper's Waterbirds and VOC settings (docs/e2kd_settings.md) for trained runs:
Waterbirds per-group accuracy / agreement (worst group, in / out of distribution), VOC F1, EPG and IoU.

    python scripts/evaluate_e2kd.py runs/e2kd_wb_kd/best.pt runs/e2kd_wb_e2kd/best.pt --split test
    python scripts/evaluate_e2kd.py runs/e2kd_voc_*_epg/best.pt --out runs/evaluate/e2kd_voc

Writes <out>/results.json and <out>/results.csv and prints a table.
"""
import argparse
import csv
import json
from pathlib import Path

# torch and the measures are imported after the arguments are parsed, so that --help and argument errors come at once.

SHOWN = ("acc", "worst_group_acc", "in_distribution_acc", "out_of_distribution_acc", "agreement",
         "in_distribution_agreement", "out_of_distribution_agreement", "f1", "epg", "iou")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="best.pt / last.pt of scripts/distill.py runs")
    p.add_argument("--split", default="test", help="Waterbirds: train|val|test; VOC: an ImageSets/Main list")
    p.add_argument("--teacher", help="teacher checkpoint for the agreement (default: each run's teacher.weights)")
    p.add_argument("--iou-threshold", type=float,
                   help="IoU threshold of the VOC IoU measure (default: the e2KD authors', "
                        "kdfast.metrics.multilabel.E2KD_IOU_THRESHOLD)")
    p.add_argument("--explain", choices=("ground_truth", "predicted"), default="ground_truth",
                   help="VOC: explain every ground-truth class (Rao et al.) or only those also predicted")
    p.add_argument("--out", default="runs/evaluate/e2kd", help="output folder (default: runs/evaluate/e2kd)")
    args = p.parse_args(argv)
    from kdfast.evaluate.e2kd_settings import evaluate_runs
    from kdfast.metrics.multilabel import E2KD_IOU_THRESHOLD

    if args.iou_threshold is None:
        args.iou_threshold = E2KD_IOU_THRESHOLD
    try:
        rows = evaluate_runs(args.checkpoints, args.split, args.teacher, args.iou_threshold, args.explain)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in SHOWN if any(row.get(c) is not None for row in rows)]
    print(" | ".join(["run"] + shown))
    for row in rows:
        values = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in shown]
        print(" | ".join([row["run"]] + values))
    print(f"written: {out / 'results.json'}, {out / 'results.csv'}")


