"""A study end to end: check everything, execute the runs (or one shard of them), aggregate what exists.

    from kdfast.study import load_study, run_study
    outcome = run_study(load_study("configs/study/icml_table1.yaml", ["seeds=[0]"]), jobs=2)
    print(outcome.text)

Outputs in <output_dir>: results.csv (tidy), summary.csv (per-group statistics), tables/<name>.md and .tex,
figures/*.png, report.html, study.json (the resolved study) and runs/<run id>/ (train/, measures/, dissect/).
"""
import dataclasses
import shutil
from pathlib import Path

from kdfast.models import registry
from kdfast.study import aggregate, figures, report, tables
from kdfast.study.measures import get_measure, resolve_options
from kdfast.study.plan import architecture, plan_runs, select_shard
from kdfast.study.runner import atomic_write_json, execute, import_plugins
from kdfast.study.schema import StudyError


@dataclasses.dataclass
class Outcome:
    runs: list
    status: dict  # run id -> 'ok' | 'failed' (the runs executed by this call)
    rows: list  # tidy rows
    stats: dict
    tables: list  # (header, rows, caption, notes)
    text: str  # the tables as aligned text
    folder: Path


def _architecture_key(run):
    if not run.trained:
        return ("checkpoint", str(run.checkpoint))
    student = run.config.student
    return (student.spec, repr(sorted(student.kwargs.items())), student.num_classes)


def _teacher_architecture(teacher):
    """(spec, kwargs) of a teacher run's model: its config's student, or what its checkpoint says it holds."""
    if teacher.trained:
        return teacher.config.student.spec, dict(teacher.config.student.kwargs)
    info = registry.checkpoint_info(teacher.checkpoint)
    return (info.spec, dict(info.kwargs)) if info is not None else (teacher.model, dict(teacher.kwargs or {}))


def _check_teachers(runs):
    """A trained run's config must describe the architecture of the teacher the study gives it."""
    by_id = {r.id: r for r in runs}
    for run in runs:
        if not (run.trained and run.teacher):
            continue
        wanted = run.config.teacher
        have_spec, have_kwargs = _teacher_architecture(by_id[run.teacher])
        if wanted.spec is None:
            raise StudyError(f"runs.{run.name}: the study gives it teacher '{run.teacher}', but its config has no "
                             "teacher.spec (set teacher: none for this run, or a teacher.spec in its config)")
        if (wanted.spec, dict(wanted.kwargs)) != (have_spec, have_kwargs):
            raise StudyError(f"runs.{run.name}: its config's teacher is '{wanted.spec}' (kwargs {dict(wanted.kwargs)}), "
                             f"but teacher '{run.teacher}' is a '{have_spec}' (kwargs {have_kwargs})")


def validate(study):
    """(runs, resolved measure options); raises StudyError for any problem found without training anything:
    unknown keys, methods, measures or options, configs that do not load, teachers, checkpoints of another
    architecture, layers that do not exist."""
    import_plugins(study.plugins)
    measures = {}
    for name, options in study.measures.items():
        get_measure(name)
        measures[name] = resolve_options(name, options)
    runs = plan_runs(study)
    built = {}
    for run in runs:
        key = _architecture_key(run)
        if key not in built:
            built[key] = (run.id, architecture(run))
    checked = dict(built.values())
    _check_teachers(runs)
    for name, options in measures.items():
        measure = get_measure(name)
        if measure.check is not None:
            measure.check(options, checked)
        if measure.needs_teacher:
            for run in runs:
                if run.role == "student" and run.trained and not run.teacher and run.config.teacher.spec is None:
                    raise StudyError(f"measures.{name}: run {run.id} has no teacher (its config's teacher.spec is "
                                     "null and the study names none); remove the measure or give the run a teacher")
    return runs, measures


def aggregate_outputs(study, runs, progress=True):
    """Writes results.csv, summary.csv, tables/, figures/ and report.html from the result files that exist."""
    out = Path(study.output_dir).resolve()
    rows = aggregate.collect(study, runs, out)
    stats = aggregate.summarise(rows, runs)
    aggregate.write_csv(rows, out / "results.csv")
    aggregate.write_summary_csv(stats, out / "summary.csv")
    (out / "tables").mkdir(parents=True, exist_ok=True)
    built, texts = [], []
    for spec in study.tables or tables.default_tables(study):
        header, body, notes = tables.build_table(spec, study, runs, stats)
        caption = spec.caption or spec.name
        (out / "tables" / f"{spec.name}.md").write_text(tables.markdown(header, body, caption, notes))
        (out / "tables" / f"{spec.name}.tex").write_text(tables.latex(header, body, caption, notes))
        built.append((header, body, caption, notes))
        texts.append("\n".join([caption, tables.plain(header, body)] + notes))
    made = figures.make_figures(study, runs, stats, out / "figures")
    failed = aggregate.failures(rows)
    report.write_report(study, runs, built, made, failed, out / "report.html")
    return rows, stats, built, "\n\n".join(texts)


def run_study(study, jobs=1, shard=None, progress=True, execute_runs=True):
    """Validates, executes the runs of `shard` (None: all) that are not finished, then aggregates every run's
    results (a run another shard owns shows as missing until merged)."""
    runs, measures = validate(study)
    out = Path(study.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "study.json", study.to_dict())
    status = execute(study, select_shard(runs, shard), runs, measures, jobs, progress) if execute_runs else {}
    rows, stats, built, text = aggregate_outputs(study, runs, progress)
    return Outcome(runs, status, rows, stats, built, text, out)


RESULT_PARTS = ("train/summary.json", "train/metrics.csv", "train/best.pt", "measures", "dissect", "evaluate",
                "error.json")


def merge(study, shard_folders):
    """Copies the result files of every run found in `shard_folders` (other machines' output_dirs) into the study's
    output_dir where it has none, then aggregates. Returns the Outcome (nothing is trained)."""
    runs, _ = validate(study)
    out = Path(study.output_dir).resolve()
    for folder in map(Path, shard_folders):
        if not (folder / "runs").is_dir():
            raise StudyError(f"--merge: {folder} holds no runs/ folder (is it a study output_dir?)")
        for run in runs:
            source, target = folder / "runs" / run.id, out / "runs" / run.id
            if not source.is_dir() or (target / "measures").is_dir():
                continue
            for part in RESULT_PARTS:
                if (source / part).is_dir():
                    shutil.copytree(source / part, target / part, dirs_exist_ok=True)
                elif (source / part).is_file():
                    (target / part).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / part, target / part)
    return run_study(study, execute_runs=False)
