"""Bad input to a dissection fails early with an error naming the file, layer, argument or image at fault."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

import planted_model
from dissect_helpers import PLANTED_FILE, SCRIPT, planted_args
from kdfast.data.broden import BrodenFormatError
from kdfast.dissect import cli
from kdfast.dissect import DissectConfig, build_model, load_weights


def test_nan_activations(broden, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANTED_NAN_IMAGE", "0.5")  # images whose top-left pixel is bright red (e.g. desert)
    message = r"layer 'features' produced NaN or Inf activations for Broden image\(s\) \[\d+"
    with pytest.raises(ValueError, match=message):
        cli.main(planted_args(broden, tmp_path / "out", "nan_model"))


def test_unknown_layer_lists_modules(broden, tmp_path):
    args = planted_args(broden, tmp_path / "out")
    args[args.index("features")] = "feature"
    message = r"unknown layer name\(s\) \['feature'\].*features, features.0, features.1, head"
    with pytest.raises(ValueError, match=message):
        cli.main(args)


def test_missing_broden(tmp_path):
    with pytest.raises(BrodenFormatError, match="does-not-exist does not exist"):
        cli.main(planted_args(tmp_path / "does-not-exist", tmp_path / "out"))


@pytest.mark.parametrize("spec, error, message", [
    ("resnet_eighteen", ValueError, "unknown model 'resnet_eighteen'"),
    (f"{PLANTED_FILE}:no_such_factory", ValueError, "has no callable 'no_such_factory'.*planted"),
    (f"{PLANTED_FILE}:not_a_model", TypeError, r"not_a_model\(\) returned str"),
    ("missing/model_file.py:build", FileNotFoundError, "model file missing/model_file.py does not exist"),
])
def test_bad_model_spec(spec, error, message):
    with pytest.raises(error, match=message):
        build_model(spec)


def test_weights(tmp_path):
    source = planted_model.planted()
    torch.nn.init.normal_(source.head.weight)
    # torchdistill-style checkpoint of a DDP-wrapped model: strip 'module.' under 'model'.
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    loaded = load_weights(planted_model.planted(), path)
    assert torch.equal(loaded.head.weight, source.head.weight)

    text = tmp_path / "weights.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="weights.txt: not a PyTorch checkpoint"):
        load_weights(planted_model.planted(), text)
    with pytest.raises(FileNotFoundError, match="nope.pth does not exist"):
        load_weights(planted_model.planted(), tmp_path / "nope.pth")

    wrong = tmp_path / "wrong.pth"
    state = source.state_dict()
    state["extra.weight"] = state.pop("head.weight")
    torch.save(state, wrong)
    with pytest.raises(ValueError, match=r"missing keys \[head.weight\], unexpected keys \[extra.weight\]"):
        load_weights(planted_model.planted(), wrong)

    shaped = tmp_path / "shaped.pth"
    torch.save({**source.state_dict(), "head.bias": torch.zeros(3)}, shaped)
    with pytest.raises(ValueError, match=r"shape mismatches: head.bias \(3,\) vs model \(2,\)"):
        load_weights(planted_model.planted(), shaped)

    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": source.state_dict(), "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(ValueError, match="--trust-weights"):
        load_weights(planted_model.planted(), pickled)
    assert torch.equal(load_weights(planted_model.planted(), pickled, trust=True).head.bias, source.head.bias)


def test_bad_weights_through_cli(broden, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match=r"bad.pth does not fit the model: missing keys \[features.0.ocean"):
        cli.main(planted_args(broden, tmp_path / "out", "planted", "--weights", str(bad)))


@pytest.mark.parametrize("field, value, message", [
    ("quantiles", (0.0,), r"--quantiles must lie in \(0, 1\]"),
    ("quantiles", (0.01, 0.01), "--quantiles repeat"),
    ("iou_threshold", 1.5, r"--iou-threshold must lie in \(0, 1\]"),
    ("denominator", "gated", "--denominator must be one of"),
    ("device", "tpu", "--device must be 'cpu' or 'cuda'"),
    ("batch_size", 0, "--batch-size must be >= 1"),
    ("layers", (), "at least one layer"),
])
def test_bad_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        DissectConfig(**{field: value})


def test_bad_sweep_spec(tmp_path):
    with pytest.raises(ValueError, match="--quantiles must be 'start:stop:step'.*got '0.01:0.005:0.001'"):
        cli.main(["--quantiles", "0.01:0.005:0.001", "--out", str(tmp_path)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable(broden, tmp_path):
    with pytest.raises(ValueError, match=r"--device cuda: no CUDA GPU is visible to torch \(use --device cpu\)"):
        cli.main(planted_args(broden, tmp_path / "out", "planted", "--device", "cuda"))


def test_script_reports_errors_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--broden", str(tmp_path / "missing"), "--out", str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip() == f"dissect.py: error: Broden directory {tmp_path / 'missing'} does not exist"
