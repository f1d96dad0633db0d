"""Paper-style tables (Markdown and LaTeX) of mean ± std over seeds (ddof 1, see aggregate.py).

A column selects one statistic per row: `metric` plus, optionally, `measure`, `layer`, `quantile`,
`iou_threshold` and `category`. Dissection metrics default to category 'all', the study's first quantile and
its primary IoU threshold, and the first dissected layer. A cell reads `mean ± std`; `(n/N)` follows when only
n of the row's N runs have a value, `—` marks a cell without any (failed or not yet run: report.html lists
them) and `n/a` a measure that does not apply (a teacher's agreement).
"""
import math
import re

from kdfast.study.aggregate import KEYS
from kdfast.study.measures import MEASURES, primary, resolve_options
from kdfast.study.runner import applicable
from kdfast.study.schema import StudyError, TableSpec

DISSECT_METRICS = ("detectors", "concepts", "units")
PERCENT_METRICS = ("accuracy", "agreement", "val_acc", "val_agreement")
MISSING = "—"
PARTIAL = re.compile(r"\(\d+/\d+\)$")
NOT_APPLICABLE = "n/a"  # e.g. a teacher's agreement with the teacher


def dissect_defaults(study):
    if "dissect" not in study.measures:
        return None
    options = resolve_options("dissect", study.measures["dissect"])
    return {"layer": options["layers"][0], "quantile": primary(options, "quantile"),
            "iou_threshold": primary(options, "iou_threshold"), "layers": options["layers"]}


def default_tables(study):
    """One table: accuracy, agreement, detectors and concepts (all categories) of every dissected layer, then
    the `columns` other measures registered."""
    columns = [{"metric": m} for m in ("accuracy", "agreement") if m in study.measures]
    if "training" in study.measures:
        columns = [{"metric": "val_acc"}, {"metric": "val_agreement"}] + columns
    defaults = dissect_defaults(study)
    for layer in (defaults or {}).get("layers", []):
        columns += [{"metric": "detectors", "layer": layer}, {"metric": "concepts", "layer": layer}]
    for name in study.measures:
        if name not in PERCENT_METRICS + ("dissect", "training"):
            columns += [{"metric": metric, "measure": name} for metric in MEASURES[name].columns]
    return [TableSpec(name="main", columns=columns, caption=f"{study.name}: mean ± std over seeds (ddof 1)")]


def resolve_column(column, study):
    column = dict(column)
    if column["metric"] in DISSECT_METRICS:
        defaults = dissect_defaults(study)
        if defaults is None:
            raise StudyError(f"table column '{column['metric']}' needs the dissect measure")
        column.setdefault("layer", defaults["layer"])
        column.setdefault("quantile", defaults["quantile"])
        column.setdefault("category", "all")
        if column["metric"] != "units":
            column.setdefault("iou_threshold", defaults["iou_threshold"])
    percent = column["metric"] in PERCENT_METRICS
    column.setdefault("scale", 100.0 if percent else 1.0)
    column.setdefault("digits", 1 if percent or column["metric"] in DISSECT_METRICS else 3)
    if "label" not in column:
        label = column["metric"] + (" (%)" if percent else "")
        if "layer" in column:
            label += f" {column['layer']}"
        if column.get("category") not in (None, "all"):
            label += f" [{column['category']}]"
        column["label"] = label
    return column


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def find_stat(stats, group, column):
    """The statistic of `group` that `column` selects (the first match in plan order), or None."""
    for key, stat in stats.items():
        if key[0] != group:
            continue
        fields = dict(zip(KEYS, key[1:]))
        if all(_same(fields[k], column[k]) for k in KEYS if k in column):
            return stat
    return None


def measure_of(column):
    """The measure a column's metric comes from (evaluate metrics are named '<measure>.<path>')."""
    metric = column["metric"]
    if column.get("measure"):
        return column["measure"]
    if metric in DISSECT_METRICS:
        return "dissect"
    return "training" if metric in ("val_acc", "val_agreement") else metric.split(".")[0]


def cell(stat, column, expected, applies=True):
    if not applies:
        return NOT_APPLICABLE
    if stat is None or stat["n"] == 0:
        return MISSING
    digits, scale = column["digits"], column["scale"]
    text = f"{stat['mean'] * scale:.{digits}f}"
    if not math.isnan(stat["std"]):
        text += f" ± {stat['std'] * scale:.{digits}f}"
    if stat["n"] < expected:
        text += f" ({stat['n']}/{expected})"
    return text


def groups_in_order(runs):
    order, seen = [], set()
    for run in runs:
        if run.group not in seen:
            seen.add(run.group)
            order.append(run.group)
    return order


def build_table(spec, study, runs, stats):
    """(header, rows, notes) of one TableSpec."""
    columns = [resolve_column(c, study) for c in spec.columns]
    expected = {g: sum(r.group == g for r in runs) for g in groups_in_order(runs)}
    if spec.rows == "group":
        header = ["run"] + [c["label"] for c in columns]
        rows = [[g] + [cell(find_stat(stats, g, c), c, expected[g], _applies(runs, g, c)) for c in columns]
                for g in expected]
    else:
        rows, header = _pivot(spec, columns[0], runs, stats, expected)
    notes = [f"{MISSING}: no result; (n/N): only n of the N runs have one. Failures: see report.html."] \
        if any(c == MISSING or PARTIAL.search(c) for r in rows for c in r[1:]) else []
    return header, rows, notes


def _applies(runs, group, column):
    if "agreement" in column["metric"] and all(r.teacher is None for r in runs if r.group == group):
        return False  # agreement with a teacher, of a run that has none (e.g. a plugin's agreement on a teacher)
    measure = measure_of(column)
    if measure not in MEASURES:
        return True
    return any(applicable(MEASURES[measure], r) for r in runs if r.group == group)


def _pivot(spec, column, runs, stats, expected):
    """Rows: values of grid key `spec.rows`; columns: values of `spec.pivot_columns`; cells: `column`."""
    def values(key):
        found = []
        for run in runs:
            if key in run.params and run.params[key] not in found:
                found.append(run.params[key])
        if not found:
            raise StudyError(f"table '{spec.name}': no run has the grid key '{key}'")
        return found

    row_values, col_values = values(spec.rows), values(spec.pivot_columns)
    group_at = {}
    for run in runs:
        if spec.rows in run.params and spec.pivot_columns in run.params:
            group_at[(run.params[spec.rows], run.params[spec.pivot_columns])] = run.group
    header = [f"{spec.rows} \\ {spec.pivot_columns}"] + [str(v) for v in col_values]
    rows = []
    for rv in row_values:
        line = [str(rv)]
        for cv in col_values:
            group = group_at.get((rv, cv))
            line.append(MISSING if group is None else cell(find_stat(stats, group, column), column, expected[group]))
        rows.append(line)
    return rows, header


def markdown(header, rows, caption="", notes=()):
    lines = [f"**{caption}**", ""] if caption else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + list(notes) if notes else []
    return "\n".join(lines) + "\n"


def _latex_escape(text):
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#")):
        text = text.replace(a, b)
    return text.replace("±", "$\\pm$").replace(MISSING, "--")


def latex(header, rows, caption="", notes=()):
    lines = ["\\begin{table}[t]", "\\centering"]
    if caption:
        lines.append(f"\\caption{{{_latex_escape(caption)}}}")
    lines.append("\\begin{tabular}{l" + "r" * (len(header) - 1) + "}")
    lines += ["\\toprule", " & ".join(_latex_escape(h) for h in header) + " \\\\", "\\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in r) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"% {n}" for n in notes]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def plain(header, rows):
    """Aligned text for the terminal."""
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)
