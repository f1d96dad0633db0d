"""report.html: the study's tables and figures, then every run with its status, error and links to its
dissection reports, training log and checkpoint (all links relative to the study folder)."""
import html
import os
from pathlib import Path

from kdfast.study.runner import read_json, run_folder


def _table_html(header, rows, caption, notes):
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    note = "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
    return f"<h3>{html.escape(caption)}</h3><table><tr>{head}</tr>{body}</table>{note}"


def _link(out, path, text):
    path = Path(path)
    if not path.exists():
        return ""
    return f'<a href="{html.escape(os.path.relpath(path, out))}">{html.escape(text)}</a>'


def _run_links(out, run):
    folder = run_folder(out, run)
    links = [_link(out, p, f"dissection {p.parent.relative_to(folder / 'dissect')}")
             for p in sorted((folder / "dissect").glob("*/report.html"))]
    links.append(_link(out, folder / "train" / "metrics.csv", "training log"))
    links.append(_link(out, run.checkpoint, "checkpoint") if Path(run.checkpoint).is_relative_to(out)
                 else html.escape(str(run.checkpoint)))
    links += [_link(out, p, f"{p.parent.name} report") for p in sorted((folder / "evaluate").glob("*/report.html"))]
    return " · ".join(link for link in links if link)


def _run_status(out, run, failures):
    mine = [(m, s, e) for r, m, s, e in failures if r == run.id]
    if not mine:
        return "ok", ""
    status = "failed" if any(s == "failed" for _, s, _ in mine) else "missing"
    return status, "; ".join(f"{m}: {e or s}" for m, s, e in mine)


def write_report(study, runs, tables, figures, failures, path):
    out = Path(path).parent
    parts = [f"<h1>Study {html.escape(study.name)}</h1>",
             f"<p>{len(runs)} runs; mean ± std over seeds with ddof 1; data: "
             f'<a href="results.csv">results.csv</a> (one row per number), <a href="summary.csv">summary.csv</a>, '
             f'tables in <a href="tables">tables/</a>.</p>']
    parts += [_table_html(*t) for t in tables]
    parts += [f'<figure><img src="{html.escape(os.path.relpath(f, out))}" style="max-width:100%"></figure>'
              for f in figures]
    rows = []
    for run in runs:
        status, error = _run_status(out, run, failures)
        summary = read_json(run_folder(out, run) / "train" / "summary.json") or {}
        acc = summary.get("best_val_acc")
        rows.append(f"<tr class={status}><td>{html.escape(run.id)}</td><td>{html.escape(run.group)}</td>"
                    f"<td>{'' if run.seed is None else run.seed}</td><td>{status}</td>"
                    f"<td>{'' if acc is None else f'{100 * acc:.1f}%'}</td><td>{html.escape(error)}</td>"
                    f"<td>{_run_links(out, run)}</td></tr>")
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>group</th><th>seed</th><th>status</th>"
                 "<th>best val acc (training)</th><th>error</th><th>links</th></tr>" + "".join(rows) + "</table>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}.failed{background:#fdd}"
             ".missing{background:#ffd}.note{font-size:85%;color:#555}")
    Path(path).write_text(f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(study.name)}</title>"
                          f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
