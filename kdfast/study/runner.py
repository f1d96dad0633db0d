"""Executing a study's runs: train what is missing, then take every measure not yet taken.

Every result is a file written atomically (temporary file + os.replace): a run's training is finished when
<run>/train/summary.json exists (a killed training resumes from its last.pt), a measure when
<run>/measures/<name>.json holds status 'ok' for the same options and checkpoint. A failure is recorded (in
<run>/error.json or the measure's file, with the error) and retried on the next invocation; the study goes on
with the other runs.
"""
import concurrent.futures
import importlib
import json
import multiprocessing
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from kdfast.atomic import write_text
from kdfast.distill.config import dump_config
from kdfast.distill.trainer import CHECKPOINT_LAST
from kdfast.provenance import file_digest
from kdfast.study.measures import MeasureContext, device_of, get_measure

DISTILL_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "distill.py"


def atomic_write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=1, sort_keys=True))


def read_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def run_folder(out, run):
    return Path(out) / "runs" / run.id


def training_finished(out, run):
    return not run.trained or (run_folder(out, run) / "train" / "summary.json").is_file()


def _launch(launcher, config_path, resume):
    """Trains in a child process: `<launcher> scripts/distill.py --config <resolved config> [--resume]`."""
    command = shlex.split(launcher) + [str(DISTILL_SCRIPT), "--config", str(config_path)] + (["--resume"] if resume
                                                                                                 else [])
    if command[0] == "python":
        command[0] = sys.executable
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}: {done.stderr[-2000:]}")


def train_run(out, run, launcher=None):
    """Trains the run unless its summary.json exists; resumes from last.pt when a previous attempt was killed."""
    from kdfast.distill.trainer import train

    if training_finished(out, run):
        return
    folder = run_folder(out, run)
    resume = (folder / "train" / CHECKPOINT_LAST).is_file()
    if launcher:
        folder.mkdir(parents=True, exist_ok=True)
        dump_config(run.config, folder / "distill_config.yaml")
        _launch(launcher, folder / "distill_config.yaml", resume)
    else:
        train(run.config, resume=resume)


def applicable(measure, run):
    """Whether `measure` is taken on `run` (e.g. not agreement on a teacher)."""
    return measure.applies_to(run)


def measure_identity(options, checkpoint):
    return json.loads(json.dumps({"options": options, "checkpoint": file_digest(checkpoint)}))


def _failure_record(exc):
    """{"error": "<type>: <message>", "traceback": ...} of the exception being handled."""
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def take_measure(out, run, name, options, context):
    """The measure's record: the finished one when its identity matches, else computed now (failures recorded)."""
    path = run_folder(out, run) / "measures" / f"{name}.json"
    identity = measure_identity(options, run.checkpoint)
    record = read_json(path)
    if record and record.get("status") == "ok" and record.get("identity") == identity:
        return record
    try:
        rows = get_measure(name).compute(context, options)
        record = {"status": "ok", "identity": identity, "rows": rows}
    except Exception as exc:  # noqa: BLE001 - a failed measure is recorded and shown as a gap, not fatal
        record = {"status": "failed", "identity": identity, **_failure_record(exc)}
    atomic_write_json(path, record)
    return record


def execute_run(out, run, measures, teacher_run=None, device="cpu", launcher=None):
    """Train (if needed) and measure one run; returns 'ok' or 'failed'."""
    folder = run_folder(out, run)
    error = folder / "error.json"
    try:
        train_run(out, run, launcher)
    except Exception as exc:  # noqa: BLE001 - recorded; the study continues with the other runs
        atomic_write_json(error, {"stage": "train", **_failure_record(exc)})
        return "failed"
    if error.is_file():
        error.unlink()
    context = MeasureContext(run, folder, device_of(device), teacher_run)
    status = "ok"
    for name, options in measures.items():
        if applicable(get_measure(name), run):
            if take_measure(out, run, name, options, context)["status"] != "ok":
                status = "failed"
    return status


def import_plugins(modules):
    for module in modules:
        importlib.import_module(module)


def _worker(plugins, out, run, measures, teacher_run, device, launcher):
    import torch

    torch.set_num_threads(1)
    import_plugins(plugins)
    return execute_run(out, run, measures, teacher_run, device, launcher)


def execute(study, runs, all_runs, measures, jobs=1, progress=True):
    """Executes `runs` (teachers first: the students' configs load their best.pt); with jobs > 1, every run goes
    to one of `jobs` worker processes of one thread each (a lone teacher too: a run's numbers depend on the
    intra-op thread count, so --jobs N gives the numbers of OMP_NUM_THREADS=1 --jobs 1). Returns {run id: status}."""
    out = Path(study.output_dir).resolve()
    by_id = {r.id: r for r in all_runs}
    needed = {r.teacher for r in runs if r.teacher} - {r.id for r in runs}
    # Teachers another shard owns are trained here too when missing (seeded: every shard trains the same one),
    # but only measured by their own shard.
    stages = [[by_id[t] for t in sorted(needed) if by_id[t].trained and not training_finished(out, by_id[t])],
              [r for r in runs if r.role == "teacher"], [r for r in runs if r.role != "teacher"]]
    status = {}
    bar = tqdm(total=sum(map(len, stages)), desc=f"study {study.name}", unit="run", disable=not progress)
    for stage_index, stage in enumerate(stages):
        chosen = measures if stage_index else {}
        if jobs <= 1 or not stage:
            for run in stage:
                bar.set_postfix_str(run.id)
                status[run.id] = execute_run(out, run, chosen, by_id.get(run.teacher), study.device, study.launcher)
                bar.update()
            continue
        # fork shares the parent's imports (torch alone takes seconds to import); CUDA cannot be forked.
        context = multiprocessing.get_context("fork" if sys.platform == "linux" and device_of(study.device) == "cpu"
                                              else "spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = {pool.submit(_worker, study.plugins, out, run, chosen, by_id.get(run.teacher), study.device,
                                   study.launcher): run for run in stage}
            for future in concurrent.futures.as_completed(futures):
                status[futures[future].id] = future.result()
                bar.set_postfix_str(futures[future].id)
                bar.update()
    bar.close()
    return status
