"""kdfast.study: a tiny study end to end, resume after a kill, no retraining, aggregation against a hand
computation, gaps for failed/missing runs, and bad input named before anything is trained."""
import dataclasses
import math

import pytest
import torch
import yaml

from kdfast.data.synthetic_broden import synthetic_broden
from kdfast.distill.models import tiny_resnet
from kdfast.study import MEASURES, StudyError, aggregate_outputs, from_dict, load_study, merge, run_study
from kdfast.study import runner as study_runner
from kdfast.study.aggregate import mean_std
from kdfast.study.plan import plan_runs

TINY = {"widths": [4, 4, 8, 8]}


def _distill_config(root):
    return {
        "seed": 0, "device": "cpu", "epochs": 1, "batch_size": 8, "workers": 0,
        "data": {"type": "hierarchical", "root": str(root / "data"), "image_size": 16, "resize_size": 16,
                 "generate": {"superclasses": 2, "subclasses": 2, "train_per_class": 6, "val_per_class": 3,
                              "size": 16, "seed": 1}},
        "teacher": {"spec": "kdfast.distill.models:tiny_resnet", "kwargs": TINY},
        "student": {"spec": "kdfast.distill.models:tiny_resnet", "kwargs": TINY},
        "method": {"name": "scratch"},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "constant"},
        "log": {"progress": False, "csv": True},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny distill config (generated 4-class data, 16 px) and a tiny synthetic Broden."""
    root = tmp_path_factory.mktemp("study_world")
    (root / "base.yaml").write_text(yaml.safe_dump(_distill_config(root)))
    (root / "kd.yaml").write_text("base: base.yaml\nmethod: {name: kd, options: {alpha: 0.5, temperature: 4.0}}\n")
    (root / "teacher.yaml").write_text("base: base.yaml\nteacher: {spec: null}\nepochs: 2\n")
    synthetic_broden(root / "broden", images=6, size=32, seed=0, progress=False)
    return root


def study_dict(world, out, **changes):
    raw = {
        "name": "tiny", "output_dir": str(out), "seeds": [0, 1],
        "teachers": {"teacher": {"config": str(world / "teacher.yaml")}}, "teacher": "teacher",
        "runs": {"scratch": {"config": str(world / "base.yaml")}, "kd": {"config": str(world / "kd.yaml")}},
        "measures": {"accuracy": {}, "agreement": {},
                     "dissect": {"layers": ["layer3", "layer4"], "quantiles": [0.01, 0.02],
                                 "iou_thresholds": [0.01, 0.04], "broden": str(world / "broden"), "batch_size": 6}},
    }
    raw.update(changes)
    return raw


def outputs(folder):
    return {name: (folder / name).read_text() for name in ("results.csv", "summary.csv", "tables/main.md",
                                                           "tables/main.tex")}


def test_study_end_to_end_resume_and_no_retraining(world, tmp_path, monkeypatch):
    whole = run_study(from_dict(study_dict(world, tmp_path / "whole")), progress=False)
    assert set(whole.status.values()) == {"ok"}
    assert [r.id for r in whole.runs] == ["teacher", "scratch-s0", "scratch-s1", "kd-s0", "kd-s1"]
    table = outputs(whole.folder)["tables/main.md"]
    assert "| kd |" in table and "—" not in table  # every cell has a value
    for name in ("report.html", "figures/detectors_per_category_layer4.png", "figures/sweep_quantile_layer3.png",
                 "figures/sweep_iou_layer4.png", "figures/accuracy.png", "runs/kd-s1/dissect/layer4/q0.01/report.html"):
        assert (whole.folder / name).is_file(), name
    assert "runs/kd-s0/dissect/layer3/report.html" in (whole.folder / "report.html").read_text()

    # Killed after the second run: the rerun continues and gives the same files as the uninterrupted study.
    calls = []
    original = study_runner.execute_run

    def killed_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(args[1].id)
        return original(*args, **kwargs)

    resumed = study_dict(world, tmp_path / "resumed", figures=[])  # the figures are checked above
    monkeypatch.setattr(study_runner, "execute_run", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_study(from_dict(resumed), progress=False)
    monkeypatch.setattr(study_runner, "execute_run", original)
    assert not (tmp_path / "resumed" / "runs" / "scratch-s1" / "measures").exists()
    assert outputs(run_study(from_dict(resumed), progress=False).folder) == outputs(whole.folder)

    # A finished run is neither retrained nor remeasured.
    def no(*args, **kwargs):
        raise AssertionError("retrained or remeasured")

    monkeypatch.setattr("kdfast.distill.trainer.train", no)
    monkeypatch.setattr(study_runner, "get_measure", lambda name: dataclasses.replace(MEASURES[name], compute=no))
    again = run_study(from_dict(resumed), progress=False)
    assert set(again.status.values()) == {"ok"} and outputs(again.folder) == outputs(whole.folder)


def _fabricate(study, values):
    """Result files of given-checkpoint runs: {run id: accuracy value | 'failed' | None (missing)}."""
    runs = plan_runs(study)
    for run in runs:
        value = values[run.id]
        if value is None:
            continue
        record = ({"status": "failed", "error": "RuntimeError: diverged"} if value == "failed" else
                  {"status": "ok", "rows": [{"metric": "accuracy", "value": value}]})
        study_runner.atomic_write_json(study_runner.run_folder(study.output_dir, run) / "measures" / "accuracy.json",
                                       record)
        dissect = [{"layer": "layer4", "quantile": 0.005, "iou_threshold": 0.05, "category": c, "metric": "detectors",
                    "value": 3 * value if value != "failed" else 0} for c in ("object", "all")]
        study_runner.atomic_write_json(study_runner.run_folder(study.output_dir, run) / "measures" / "dissect.json",
                                       {"status": "ok", "rows": dissect} if value != "failed" else record)
    return runs


def test_aggregation_matches_hand_computation_and_shows_gaps(tmp_path):
    study = from_dict({"name": "fab", "output_dir": str(tmp_path / "fab"),
                       "runs": {"a": ["a0.pt", "a1.pt", "a2.pt"], "b": ["b0.pt", "b1.pt", "b2.pt"],
                                "c": ["c0.pt"]},
                       "measures": {"accuracy": {}, "dissect": {}}}, base=tmp_path)
    values = {"a-c0": 0.5, "a-c1": 0.75, "a-c2": 1.0, "b-c0": 0.25, "b-c1": "failed", "b-c2": None, "c-c0": None}
    runs = _fabricate(study, values)
    rows, stats, tables, text = aggregate_outputs(study, runs)
    a = stats[("a", "accuracy", "", "", "", "", "accuracy")]
    # Hand computation: mean 0.75, sample std (ddof 1) sqrt((0.0625 + 0 + 0.0625) / 2) = 0.25.
    assert a["n"] == 3 and a["mean"] == 0.75 and a["std"] == 0.25
    hand = (7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx(hand, rel=1e-15)
    assert mean_std([5.0])[0] == 5.0 and math.isnan(mean_std([5.0])[1]) and all(map(math.isnan, mean_std([])))
    b = stats[("b", "accuracy", "", "", "", "", "accuracy")]
    assert b["n"] == 1 and b["expected"] == 3 and math.isnan(b["std"])
    header, body, caption, notes = tables[0]
    assert body[0][:2] == ["a", "75.0 ± 25.0"]
    assert body[1][:2] == ["b", "25.0 (1/3)"]  # one of three runs: no std, the gap shown
    assert body[2][1] == "—" and notes  # a group without any result keeps its row
    statuses = {(r["run"], r["measure"]): (r["status"], r["error"]) for r in rows if r["status"] != "ok"}
    assert statuses[("b-c1", "accuracy")] == ("failed", "RuntimeError: diverged")
    assert statuses[("b-c2", "accuracy")] == ("missing", "")
    assert statuses[("c-c0", "dissect")] == ("missing", "")
    for name in ("figures/detectors_per_category_layer4.png", "figures/accuracy.png", "tables/main.tex"):
        assert (tmp_path / "fab" / name).is_file(), name
    report = (tmp_path / "fab" / "report.html").read_text()
    assert "RuntimeError: diverged" in report and "class=missing" in report
    assert "25.0 (1/3)" in (tmp_path / "fab" / "tables" / "main.md").read_text()


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the study was validated")

    monkeypatch.setattr("kdfast.distill.trainer.train", refuse)


def _error(raw, tmp_path):
    with pytest.raises(StudyError) as info:
        run_study(from_dict(raw, base=tmp_path), progress=False)
    return str(info.value)


def test_bad_input_is_named_before_training(world, tmp_path, no_training):
    out = tmp_path / "bad"
    raw = study_dict(world, out)
    raw["runs"]["kd"]["overrides"] = ["method.name=kdd"]
    message = _error(raw, tmp_path)
    assert "runs.kd" in message and "'kdd'" in message and "Did you mean 'kd'" in message

    raw = study_dict(world, out)
    raw["runz"] = raw.pop("runs")
    with pytest.raises(StudyError, match=r"runz: unknown key at the top level\. Did you mean 'runs'"):
        from_dict(raw)

    raw = study_dict(world, out)
    raw["measures"]["dissect"]["layers"] = ["layer4", "layer5"]
    message = _error(raw, tmp_path)
    assert "layer 'layer5' does not exist" in message and "Did you mean 'layer4'" in message

    raw = study_dict(world, out)
    raw["measures"]["dissection"] = {}
    assert "Did you mean 'dissect'" in _error(raw, tmp_path)
    raw = study_dict(world, out)
    raw["measures"]["dissect"]["layer"] = ["layer4"]
    assert "measures.dissect.layer: unknown option. Did you mean 'layers'" in _error(raw, tmp_path)

    # A checkpoint of another architecture: its own config says tiny_resnet, the study expects resnet18; and a
    # plain state dict that does not load into the architecture the study names.
    path = tmp_path / "tiny.pt"
    torch.save({"model": tiny_resnet(4, **TINY).state_dict(), "config": {"student": {
        "spec": "kdfast.distill.models:tiny_resnet", "kwargs": TINY, "num_classes": 4}}}, path)
    raw = study_dict(world, out, runs={"kd": {"checkpoints": [str(path)], "model": "resnet18"}})
    message = _error(raw, tmp_path)
    assert str(path) in message and "'kdfast.distill.models:tiny_resnet'" in message and "'resnet18'" in message
    plain = tmp_path / "plain.pt"
    torch.save(tiny_resnet(4, **TINY).state_dict(), plain)
    raw = study_dict(world, out, runs={"kd": {"checkpoints": [str(plain)], "model": "resnet18"}})
    assert str(plain) in _error(raw, tmp_path)
    # A teacher of another architecture than the runs' configs describe.
    narrow = tmp_path / "narrow.pt"
    torch.save({"model": tiny_resnet(4, widths=[4, 4, 4, 4]).state_dict(), "config": {"student": {
        "spec": "kdfast.distill.models:tiny_resnet", "kwargs": {"widths": [4, 4, 4, 4]}, "num_classes": 4}}}, narrow)
    raw = study_dict(world, out, teachers={"teacher": {"checkpoints": [str(narrow)]}})
    message = _error(raw, tmp_path)
    assert "runs.scratch: its config's teacher is 'kdfast.distill.models:tiny_resnet'" in message
    assert "{'widths': [4, 4, 4, 4]}" in message
    assert not out.exists() or not (out / "runs").exists()


def test_study_files_load_and_plan(tmp_path):
    """Every shipped study config loads and plans (paths, methods, grids) without training anything."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "study"
    for path in sorted(folder.glob("*.yaml")):
        study = load_study(path, [f"output_dir={tmp_path / path.stem}"])
        runs = plan_runs(study)
        assert runs, path
        assert len({r.id for r in runs}) == len(runs)


def test_pivot_table_over_a_grid_from_merged_shards(world, tmp_path):
    """Tables 6-8 layout (alpha rows x T columns) from results fabricated in two shard folders and merged."""
    table = {"name": "grid", "rows": "alpha", "pivot_columns": "temperature", "columns": ["accuracy"]}
    grid = {"method.options.alpha": [0.1, 0.9], "method.options.temperature": [1.0, 4.0]}
    raw = study_dict(world, tmp_path / "merged", teachers={}, teacher=None, seeds=[0], figures=[], tables=[table],
                     runs={"kd": {"config": str(world / "kd.yaml"), "grid": grid}}, measures={"accuracy": {}})
    study = from_dict(raw)
    runs = plan_runs(study)
    for index, run in enumerate(runs):
        if run.params == {"alpha": 0.9, "temperature": 4.0}:
            continue  # never ran: a gap
        shard = tmp_path / f"shard{index % 2}"
        folder = study_runner.run_folder(shard, run)
        study_runner.atomic_write_json(folder / "train" / "summary.json", {"best_val_acc": 0.0})
        study_runner.atomic_write_json(folder / "measures" / "accuracy.json", {"status": "ok", "rows": [
            {"metric": "accuracy", "value": run.params["alpha"] + run.params["temperature"] / 100}]})
    outcome = merge(study, [tmp_path / "shard0", tmp_path / "shard1"])
    header, rows, caption, notes = outcome.tables[0]
    assert header == ["alpha \\ temperature", "1.0", "4.0"]
    assert rows == [["0.1", "11.0", "14.0"], ["0.9", "91.0", "—"]]
    assert "alpha \\textbackslash{} temperature" in (tmp_path / "merged" / "tables" / "grid.tex").read_text()


def test_agreement_of_a_run_without_teacher_is_not_applicable():
    """A plugin measure's agreement column on a teacher row reads n/a (not a gap with a 'Failures' note); a
    student's missing agreement is still a gap."""
    from types import SimpleNamespace

    from kdfast.study.tables import build_table

    runs = [SimpleNamespace(group="teacher", teacher=None, role="teacher", params={}),
            SimpleNamespace(group="kd", teacher="teacher", role="student", params={}),
            SimpleNamespace(group="kd2", teacher="teacher", role="student", params={})]
    stat = {"n": 1, "mean": 0.5, "std": float("nan"), "expected": 1}
    stats = {("kd", "waterbirds_groups", "", "", "", "", "agreement"): stat,
             ("teacher", "waterbirds_groups", "", "", "", "", "accuracy"): stat}
    spec = SimpleNamespace(rows="group", columns=[{"metric": "agreement", "measure": "waterbirds_groups"},
                                                  {"metric": "accuracy", "measure": "waterbirds_groups"}])
    header, rows, notes = build_table(spec, SimpleNamespace(measures={}), runs, stats)
    assert rows[0] == ["teacher", "n/a", "50.0"] and rows[1][1] == "50.0"
    assert rows[2][1] == "—" and notes  # a student without the value is a gap
    stats[("kd2", "waterbirds_groups", "", "", "", "", "agreement")] = stat
    stats[("kd", "waterbirds_groups", "", "", "", "", "accuracy")] = stat
    stats[("kd2", "waterbirds_groups", "", "", "", "", "accuracy")] = stat
    assert build_table(spec, SimpleNamespace(measures={}), runs, stats)[2] == []
