"""A study's YAML file: every key checked (a misspelled one is named with the closest known key), paths
resolved relative to the file, `key.path=value` overrides from the command line.

    name: icml_table1                  # default: the file's stem
    output_dir: null                   # default: runs/study/<name> (relative to the working directory)
    seeds: [0, 1, 2]                   # seeds of every trained run (a run may set its own)
    overrides: [data.root=/data/imagenet]   # applied to every trained run's distill config
    teachers:                          # trained once (or given as a checkpoint), before the runs that use them
      teacher: {config: ../embedded_default/teacher.yaml}
    teacher: teacher                   # default teacher of the runs: its best.pt becomes teacher.weights
    runs:
      scratch: {config: ../scratch.yaml}
      kd: {config: ../kd.yaml, grid: {method.options.alpha: [0.1, 0.5]}}
      kd_given: [a.pt, b.pt, c.pt]     # existing checkpoints, one per seed: measured, never trained
    measures:
      accuracy: {}
      dissect: {layers: [layer3, layer4]}
    tables: [...]                      # see docs/study.md
"""
import copy
import dataclasses
import difflib
from pathlib import Path

from kdfast.distill.config import load_yaml_file, parse_override, set_key
from kdfast.provenance import plain


class StudyError(ValueError):
    """A problem with a study (its file, a run, a checkpoint, a measure), found before anything is trained."""


def hint(name, known):
    """' Did you mean 'x'?' for the closest of `known`, else ''."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_key(path, key, known):
    where = f"in '{path}'" if path else "at the top level"
    return StudyError(f"{_join(path, key)}: unknown key {where}.{hint(key, known)} Known keys: {', '.join(known)}")


def _join(path, key):
    return f"{path}.{key}" if path else str(key)


@dataclasses.dataclass
class TrainSpec:
    """Runs trained with scripts/distill.py: one per grid point and seed."""

    config: Path  # the distill config (absolute)
    overrides: list = dataclasses.field(default_factory=list)
    grid: dict = dataclasses.field(default_factory=dict)  # dotted distill key -> list of values
    seeds: list = None  # None: the study's seeds
    teacher: str = None  # a name in `teachers`; None: the study's `teacher`; "none": the config's own


@dataclasses.dataclass
class CheckpointSpec:
    """Existing checkpoints of one method (one per seed): measured, never trained."""

    checkpoints: list  # absolute Paths
    model: str = None  # expected architecture spec (checked against each checkpoint's own config)
    kwargs: dict = None  # builder arguments, for plain state dicts without a config
    teacher: str = None


@dataclasses.dataclass
class TableSpec:
    name: str
    columns: list  # of column selectors (dicts), see docs/study.md
    rows: str = "group"  # 'group' (one row per method × hyper-parameters) or a grid key (pivot with `pivot_columns`)
    pivot_columns: str = None  # a grid key: one column per value, cells = the first column selector
    caption: str = ""


@dataclasses.dataclass
class StudyConfig:
    name: str
    path: Path  # the study file (None for a mapping built in code)
    output_dir: Path
    seeds: list
    overrides: list
    teachers: dict  # name -> TrainSpec | CheckpointSpec
    teacher: str
    runs: dict  # name -> TrainSpec | CheckpointSpec
    measures: dict  # name -> options dict
    tables: list  # TableSpecs
    figures: list
    device: str
    launcher: str  # None: train in this process; else a command prefix, e.g. 'torchrun --nproc_per_node 4'
    plugins: list  # modules imported first (they register measures)
    jobs: int = 1  # runs executed at a time (worker processes of one thread each); --jobs overrides

    def to_dict(self):
        return plain(dataclasses.asdict(self))


TOP_KEYS = ("name", "output_dir", "seeds", "overrides", "teachers", "teacher", "runs", "measures", "tables",
            "figures", "device", "launcher", "plugins", "jobs")
TRAIN_KEYS = ("config", "overrides", "grid", "seeds", "teacher")
CHECKPOINT_KEYS = ("checkpoints", "model", "kwargs", "teacher")
TABLE_KEYS = ("name", "columns", "rows", "pivot_columns", "caption")
COLUMN_KEYS = ("metric", "measure", "layer", "quantile", "iou_threshold", "category", "label", "scale", "digits")
DISTILL_PREFIX = "distill."
FIGURES = ("detectors_per_category", "sweeps", "accuracy")


def _expect(value, kind, path):
    names = {list: "a list", dict: "a mapping", str: "a string", int: "an integer"}
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StudyError(f"{path}: expected {names[kind]}, got {value!r} ({type(value).__name__})")
    return value


def _check_keys(raw, known, path):
    for key in raw:
        if key not in known:
            raise unknown_key(path, key, known)


def _path(value, base, where):
    if not isinstance(value, (str, Path)):
        raise StudyError(f"{where}: expected a file path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _overrides(value, where):
    items = _expect(value, list, where)
    for i, item in enumerate(items):
        _expect(item, str, f"{where}[{i}]")
        try:
            parse_override(item)
        except ValueError as exc:
            raise StudyError(f"{where}[{i}]: {exc}") from exc
    return list(items)


def _seeds(value, where):
    seeds = _expect(value, list, where)
    if not seeds:
        raise StudyError(f"{where}: at least one seed is needed")
    for i, s in enumerate(seeds):
        _expect(s, int, f"{where}[{i}]")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{where}: seeds repeat: {seeds}")
    return list(seeds)


def _run_spec(raw, base, where):
    """A TrainSpec (mapping with `config`), or a CheckpointSpec (a list of files or a mapping with `checkpoints`)."""
    if isinstance(raw, (list, str)):
        raw = {"checkpoints": [raw] if isinstance(raw, str) else raw}
    _expect(raw, dict, where)
    if "checkpoints" in raw:
        _check_keys(raw, CHECKPOINT_KEYS, where)
        files = _expect(raw["checkpoints"], list, f"{where}.checkpoints")
        if not files:
            raise StudyError(f"{where}.checkpoints: the list is empty")
        return CheckpointSpec(
            checkpoints=[_path(f, base, f"{where}.checkpoints[{i}]") for i, f in enumerate(files)],
            model=raw.get("model"), kwargs=raw.get("kwargs"), teacher=raw.get("teacher"))
    _check_keys(raw, TRAIN_KEYS, where)
    if "config" not in raw:
        raise StudyError(f"{where}: a run needs 'config' (a distill config file) or 'checkpoints' (a list of files)")
    grid = _expect(raw.get("grid") or {}, dict, f"{where}.grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{where}.grid.{key}: expected a non-empty list of values, got {values!r}")
    return TrainSpec(
        config=_path(raw["config"], base, f"{where}.config"),
        overrides=_overrides(raw.get("overrides") or [], f"{where}.overrides"),
        grid=copy.deepcopy(grid),
        seeds=None if raw.get("seeds") is None else _seeds(raw["seeds"], f"{where}.seeds"),
        teacher=raw.get("teacher"),
    )


def _column(raw, where):
    if isinstance(raw, str):
        raw = {"metric": raw}
    _expect(raw, dict, where)
    _check_keys(raw, COLUMN_KEYS, where)
    if "metric" not in raw:
        raise StudyError(f"{where}: a column needs 'metric'")
    return dict(raw)


def _table(raw, where):
    _expect(raw, dict, where)
    _check_keys(raw, TABLE_KEYS, where)
    for key in ("name", "columns"):
        if key not in raw:
            raise StudyError(f"{where}: a table needs '{key}'")
    columns = [_column(c, f"{where}.columns[{i}]") for i, c in enumerate(_expect(raw["columns"], list,
                                                                                 f"{where}.columns"))]
    if not columns:
        raise StudyError(f"{where}.columns: at least one column is needed")
    return TableSpec(name=_expect(raw["name"], str, f"{where}.name"), columns=columns,
                     rows=raw.get("rows", "group"), pivot_columns=raw.get("pivot_columns"),
                     caption=raw.get("caption", ""))


def read_yaml(path):
    raw = load_yaml_file(path, "study file", StudyError)
    if not isinstance(raw, dict):
        raise StudyError(f"study file {path}: expected a mapping of keys at the top level")
    return raw


def apply_overrides(raw, overrides):
    """`key.path=value` (value read as YAML) set into the raw mapping; the first key must be a study key.
    `distill.key.path=value` appends `key.path=value` to the study's `overrides` (every trained run's config)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        if text.startswith(DISTILL_PREFIX):  # one more override of every trained run's distill config
            raw["overrides"] = list(raw.get("overrides") or []) + [text[len(DISTILL_PREFIX):]]
            continue
        try:
            key, value = parse_override(text)
        except ValueError as exc:
            raise StudyError(str(exc)) from exc
        top = key.split(".")[0]
        if top not in TOP_KEYS:
            raise unknown_key("", top, TOP_KEYS)
        set_key(raw, key, value, StudyError)
    return raw


def from_dict(raw, path=None, base=None):
    """A checked StudyConfig from a mapping; relative paths are taken from `base` (the file's folder)."""
    _expect(raw, dict, "study")
    _check_keys(raw, TOP_KEYS, "")
    base = Path(base or (path.parent if path else Path.cwd())).resolve()
    name = raw.get("name") or (Path(path).stem if path else None)
    if not name:
        raise StudyError("name: a study needs a name (or a file whose stem names it)")
    _expect(name, str, "name")
    output = raw.get("output_dir")
    teachers = {k: _run_spec(v, base, f"teachers.{k}") for k, v in _expect(raw.get("teachers") or {}, dict,
                                                                          "teachers").items()}
    runs = {k: _run_spec(v, base, f"runs.{k}") for k, v in _expect(raw.get("runs") or {}, dict, "runs").items()}
    if not runs:
        raise StudyError("runs: a study needs at least one run")
    clash = sorted(set(teachers) & set(runs))
    if clash:
        raise StudyError(f"runs: {clash} are also teacher names; names must be distinct")
    teacher = raw.get("teacher")
    for where, spec_teacher in [("teacher", teacher)] + [(f"runs.{k}.teacher", s.teacher) for k, s in runs.items()]:
        if spec_teacher not in (None, "none") and spec_teacher not in teachers:
            raise StudyError(f"{where}: unknown teacher '{spec_teacher}'.{hint(spec_teacher, teachers)} "
                             f"Teachers: {', '.join(teachers) or 'none defined (add a teachers: section)'}")
    measures = _expect(raw.get("measures") or {}, dict, "measures")
    for key, options in measures.items():
        _expect(options if options is not None else {}, dict, f"measures.{key}")
    figures = _expect(raw.get("figures", list(FIGURES)), list, "figures")
    for i, figure in enumerate(figures):
        if figure not in FIGURES:
            raise StudyError(f"figures[{i}]: unknown figure '{figure}'.{hint(figure, FIGURES)} "
                             f"Known: {', '.join(FIGURES)}")
    return StudyConfig(
        name=name,
        path=None if path is None else Path(path).resolve(),
        output_dir=Path(output) if output else Path("runs") / "study" / name,
        seeds=_seeds(raw.get("seeds", [0]), "seeds"),
        overrides=_overrides(raw.get("overrides") or [], "overrides"),
        teachers=teachers,
        teacher=teacher,
        runs=runs,
        measures={k: dict(v or {}) for k, v in measures.items()},
        tables=[_table(t, f"tables[{i}]") for i, t in enumerate(_expect(raw.get("tables") or [], list, "tables"))],
        figures=list(figures),
        device=_expect(raw.get("device", "cpu"), str, "device"),
        launcher=raw.get("launcher"),
        plugins=[_expect(p, str, f"plugins[{i}]") for i, p in enumerate(_expect(raw.get("plugins") or [], list,
                                                                                  "plugins"))],
        jobs=_positive_int(raw.get("jobs", 1), "jobs"),
    )


def _positive_int(value, where):
    if _expect(value, int, where) < 1:
        raise StudyError(f"{where}: expected at least 1, got {value}")
    return value


def load_study(path, overrides=()):
    """StudyConfig from a YAML file plus `key.path=value` overrides."""
    path = Path(path)
    return from_dict(apply_overrides(read_yaml(path), overrides), path=path)


__all__ = ["CheckpointSpec", "StudyConfig", "StudyError", "TableSpec", "TrainSpec", "from_dict", "hint",
           "load_study"]
