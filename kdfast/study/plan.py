"""From a StudyConfig to the list of runs it asks for, each checked before anything is trained.

A run is one checkpoint to measure: a teacher (trained once), one grid point × seed of a trained method, or
one given checkpoint. Its id names its folder, `<output_dir>/runs/<id>/`.
"""
import dataclasses
import itertools
import re
from pathlib import Path

from kdfast.distill import METHOD_NAMES
from kdfast.distill.config import ConfigError, load_config
from kdfast.distill.trainer import CHECKPOINT_BEST
from kdfast.study import models
from kdfast.study.schema import CheckpointSpec, StudyError, hint


@dataclasses.dataclass
class Run:
    id: str  # folder name under <output_dir>/runs/
    name: str  # the study's run (or teacher) entry
    group: str  # table row: the entry plus its hyper-parameters, e.g. 'kd (alpha=0.5, temperature=4.0)'
    role: str  # 'teacher' or 'student'
    seed: int  # None for a given checkpoint without a config
    params: dict  # grid key (last dotted part) -> value
    checkpoint: Path  # best.pt of a trained run, or the given file
    config: object = None  # the distill Config of a trained run; None for a given checkpoint
    teacher: str = None  # id of the teacher run it was trained with (or measured against)
    model: str = None  # given checkpoints: the expected architecture
    kwargs: dict = None

    @property
    def trained(self):
        return self.config is not None

    @property
    def method(self):
        """The distillation method's registry name (from the config), or the entry name for given checkpoints."""
        return self.config.method.name if self.config is not None else self.name


def _safe(text):
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", str(text))


def _short_keys(grid):
    """Grid key -> short name (its last dotted part, or the whole key where two would clash)."""
    last = [k.split(".")[-1] for k in grid]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(grid, last)}


def _points(grid):
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def group_name(name, params):
    return name if not params else f"{name} ({', '.join(f'{k}={v}' for k, v in params.items())})"


def _config(path, overrides, where):
    try:
        return load_config(path, overrides)
    except (ConfigError, ValueError) as exc:
        raise StudyError(f"{where}: {exc}") from exc


def _check_method(config, where):
    name = config.method.name
    if name not in METHOD_NAMES:
        raise StudyError(f"{where}: unknown method '{name}' (method.name in {config.name}).{hint(name, METHOD_NAMES)} "
                         f"Known methods: {', '.join(METHOD_NAMES)}")


def _trained_config(study, spec, rid, out, where, extra=(), teacher=None):
    """(the checked distill Config of trained run `rid`, its train folder): the study's and the entry's overrides,
    then `extra`, the run's name and folder, the study's device and the teacher's weights (in that order)."""
    train_dir = out / "runs" / rid / "train"
    overrides = study.overrides + spec.overrides + list(extra) + [f"name={rid}", f"output_dir={train_dir}"]
    if study.device != "auto":
        overrides.append(f"device={study.device}")
    if teacher is not None:
        overrides.append(f"teacher.weights={teacher.checkpoint}")
    config = _config(spec.config, overrides, where)
    _check_method(config, where)
    return config, train_dir


def _teacher_runs(study, out):
    runs = {}
    for name, spec in study.teachers.items():
        where = f"teachers.{name}"
        if isinstance(spec, CheckpointSpec):
            if len(spec.checkpoints) != 1:
                raise StudyError(f"{where}: a teacher is one checkpoint, got {len(spec.checkpoints)}")
            runs[name] = Run(id=_safe(name), name=name, group=name, role="teacher", seed=None, params={},
                             checkpoint=spec.checkpoints[0], model=spec.model, kwargs=spec.kwargs)
            continue
        rid = _safe(name)
        config, train_dir = _trained_config(study, spec, rid, out, where)
        runs[name] = Run(id=rid, name=name, group=name, role="teacher", seed=config.seed, params={},
                         checkpoint=train_dir / CHECKPOINT_BEST, config=config)
    return runs


def plan_runs(study):
    """[Run], teachers first, then the study's runs in file order (grid points in order, then seeds)."""
    out = Path(study.output_dir).resolve()
    teachers = _teacher_runs(study, out)
    runs = list(teachers.values())
    for name, spec in study.runs.items():
        where = f"runs.{name}"
        teacher_name = spec.teacher if spec.teacher is not None else study.teacher
        teacher = teachers.get(teacher_name) if teacher_name not in (None, "none") else None
        if isinstance(spec, CheckpointSpec):
            for i, path in enumerate(spec.checkpoints):
                runs.append(Run(id=_safe(f"{name}-c{i}"), name=name, group=name, role="student", seed=i, params={},
                                checkpoint=path, teacher=teacher.id if teacher else None, model=spec.model,
                                kwargs=spec.kwargs))
            continue
        short = _short_keys(spec.grid)
        for point in _points(spec.grid):
            params = {short[k]: v for k, v in point.items()}
            for seed in spec.seeds or study.seeds:
                rid = _safe("-".join([name] + [f"{k}={v}" for k, v in params.items()] + [f"s{seed}"]))
                extra = [f"{k}={v}" for k, v in point.items()] + [f"seed={seed}"]
                config, train_dir = _trained_config(study, spec, rid, out, where, extra, teacher)
                runs.append(Run(id=rid, name=name, group=group_name(name, params), role="student", seed=seed,
                                params=params, checkpoint=train_dir / CHECKPOINT_BEST, config=config,
                                teacher=teacher.id if teacher else None))
    ids = [r.id for r in runs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise StudyError(f"runs: the run ids {repeated} repeat; rename the entries")
    return runs


def architecture(run):
    """A model with the run's student architecture (random weights for trained runs; a given checkpoint's
    weights, loaded strictly, so a checkpoint of another architecture fails here)."""
    if run.trained:
        student = run.config.student
        try:
            return models.skeleton(student.spec, student.kwargs, student.num_classes)
        except (OSError, TypeError, ValueError) as exc:
            raise StudyError(f"run {run.id}: {exc}") from exc
    try:
        return models.checkpoint_student(run.checkpoint, run.model, run.kwargs)[0]
    except (OSError, ValueError) as exc:
        where = f"teachers.{run.name}" if run.role == "teacher" else f"runs.{run.name}"
        raise StudyError(f"{where}: {exc}") from exc


def select_shard(runs, shard):
    """The runs of shard (i, n): every n-th run starting at i, in plan order. None = all."""
    if shard is None:
        return list(runs)
    index, count = shard
    return [r for k, r in enumerate(runs) if k % count == index]


def parse_shard(text):
    match = re.fullmatch(r"(\d+)/(\d+)", text or "")
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise StudyError(f"--shard: expected i/n with 0 <= i < n (e.g. 0/4), got '{text}'")
    return int(match.group(1)), int(match.group(2))
