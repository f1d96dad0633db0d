import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY = ["--synthetic-sizes", "60", "40", "40", "--teacher-layers", "2", "--student-layers", "1", "--hidden-size", "16",
        "--heads", "2", "--intermediate-size", "32", "--max-position", "64", "--vocab-size", "120", "--epochs", "2",
        "--n-steps", "4", "--batch-size", "16"]


def _script(name):
    sys.path.insert(0, str(SCRIPTS))  # evaluate_nlp imports distill_nlp as a sibling, as when run as a script
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_distill_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    _script("distill_nlp").main(TINY + ["--out", str(out)])
    printed = capsys.readouterr().out
    assert "f_scratch (1-layer)" in printed and "f_KD (1-layer)" in printed and "teacher (2-layer)" in printed
    manifest = json.loads((out / "models.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["teacher", "L1-scratch-s0", "L1-kd-s0"]
    # Paths inside the output folder are stored relative to it (evaluate_nlp.py may run from anywhere).
    assert all(not Path(m["path"]).is_absolute() and (out / m["path"] / "config.json").is_file()
               for m in manifest["models"])
    assert sorted(p.name for p in (out / "data").iterdir()) == ["dev.txt", "test.txt", "train.txt"]
    rows = _rows(out / "scores.csv")
    assert [r["name"] for r in rows] == ["teacher", "L1-scratch-s0", "L1-kd-s0"]
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["auroc"]) <= 1 and 0 < float(r["auprc"]) <= 1

    # Re-scoring reads the manifest; the same models and settings give the same scores.
    (out / "scores.csv").unlink()
    _script("evaluate_nlp").main(["--out", str(out), "--n-steps", "4"])
    assert _rows(out / "scores.csv") == rows

    # Scoring folders directly: the kind comes from each folder's training record.
    direct = tmp_path / "direct"
    _script("evaluate_nlp").main(["--models", str(out / "students" / "L1-kd-s0"), "--data", str(out / "data"),
                                  "--out", str(direct), "--n-steps", "4", "--splits", "test"])
    (row,) = _rows(direct / "scores.csv")
    assert (row["kind"], row["layers"]) == ("kd", "1")


def test_given_teacher_is_reused_and_students_start_from_it(tmp_path):
    first = tmp_path / "first"
    _script("distill_nlp").main(TINY + ["--out", str(first), "--no-eval"])
    assert not (first / "scores.csv").exists()
    second = tmp_path / "second"
    _script("distill_nlp").main(TINY + ["--out", str(second), "--data", str(first / "data"), "--teacher",
                                        str(first / "teacher"), "--student-init", "teacher", "--no-eval",
                                        "--seeds", "3"])
    manifest = json.loads((second / "models.json").read_text())
    assert manifest["models"][0]["path"] == str(first / "teacher")
    assert [m["name"] for m in manifest["models"][1:]] == ["L1-scratch-s3", "L1-kd-s3"]
    assert not (second / "teacher").exists()


def test_cli_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train the models first"):
        _script("evaluate_nlp").main(["--out", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit):
        _script("distill_nlp").main(["--teacher", "a", "--teacher-init", "b"])
    with pytest.raises(FileNotFoundError, match="lacks train.txt"):
        _script("distill_nlp").main(TINY + ["--data", str(tmp_path), "--out", str(tmp_path / "o")])
