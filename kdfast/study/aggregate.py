"""From the per-run result files to one tidy table (results.csv) and per-group statistics over seeds.

Statistics: mean and sample standard deviation with ddof = 1 (divisor n − 1), over the runs of a group (one
method × hyper-parameter point, its seeds) that have a value; `n` counts them and `expected` counts the group's
runs, so failed or missing runs show as n < expected instead of disappearing.
"""
import csv
import math

from kdfast.study.measures import get_measure
from kdfast.study.runner import applicable, read_json, run_folder

DDOF = 1
COLUMNS = ("study", "run", "group", "name", "method", "role", "seed", "params", "measure", "layer", "quantile",
           "iou_threshold", "category", "metric", "value", "status", "error")
KEYS = ("measure", "layer", "quantile", "iou_threshold", "category", "metric")


def _params(params):
    return ";".join(f"{k}={v}" for k, v in params.items())


def _error_text(record):
    return " ".join(str(record.get("error", "")).split())


def collect(study, runs, out):
    """Tidy rows of every planned run (in plan order, measures in study order): one per number, and one with
    status 'failed' or 'missing' (and the error) for each training or measure without a result."""
    rows = []
    for run in runs:
        base = {"study": study.name, "run": run.id, "group": run.group, "name": run.name, "method": run.method,
                "role": run.role, "seed": "" if run.seed is None else run.seed, "params": _params(run.params)}
        folder = run_folder(out, run)
        error = read_json(folder / "error.json")
        if error is not None or (run.trained and not (folder / "train" / "summary.json").is_file()):
            status = "failed" if error is not None else "missing"
            rows.append({**base, "measure": "train", "status": status,
                         "error": _error_text(error) if error else ""})
            continue
        for name in study.measures:
            if not applicable(get_measure(name), run):
                continue
            record = read_json(folder / "measures" / f"{name}.json")
            if record is None or record.get("status") != "ok":
                rows.append({**base, "measure": name, "status": "missing" if record is None else "failed",
                             "error": "" if record is None else _error_text(record)})
                continue
            for row in record["rows"]:
                rows.append({**base, "measure": name, "status": "ok", "error": "",
                             **{k: row.get(k, "") for k in KEYS[1:]}, "value": row["value"]})
    return [{c: row.get(c, "") for c in COLUMNS} for row in rows]


def _text(value):
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_text(row[c]) for c in COLUMNS])


def mean_std(values, ddof=DDOF):
    """(mean, std with `ddof`); std is NaN when there are not more than ddof values, both NaN for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n <= ddof:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - ddof))


def summarise(rows, runs):
    """{(group, measure, layer, quantile, iou_threshold, category, metric): stats}; stats hold n, expected,
    mean, std (ddof 1), min, max and the runs' values in plan order."""
    expected = {}
    for run in runs:
        expected[run.group] = expected.get(run.group, 0) + 1
    values = {}
    for row in rows:
        if row["status"] == "ok":
            values.setdefault((row["group"],) + tuple(row[k] for k in KEYS), []).append(float(row["value"]))
    stats = {}
    for key, found in values.items():
        mean, std = mean_std(found)
        stats[key] = {"n": len(found), "expected": expected[key[0]], "mean": mean, "std": std, "min": min(found),
                      "max": max(found), "values": found}
    return stats


def failures(rows):
    """[(run, measure, status, error)] of every training or measure without a result."""
    return [(r["run"], r["measure"], r["status"], r["error"]) for r in rows if r["status"] != "ok"]


def write_summary_csv(stats, path):
    header = ("group",) + KEYS + ("n", "expected", "mean", "std", "min", "max")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for key, s in stats.items():
            writer.writerow([_text(k) for k in key] + [s["n"], s["expected"]] +
                            [_text(s[k]) for k in ("mean", "std", "min", "max")])
