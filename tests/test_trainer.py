"""The distillation trainer: exact resume, DDP == one process, checkpoints, errors, the embedded default."""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from kdfast.distill.config import ConfigError, ScheduleConfig, load_config
from kdfast.distill.trainer import LRSchedule, Trainer, adaptive_clip_, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"widths": [4, 4, 8, 8]}

MODEL_FILE = '''
from torch import nn


def net(num_classes):
    """No BatchNorm: its per-process batch statistics would make DDP differ from one process."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, num_classes))


def wrong_classes(num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))
'''


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hier") / "data"


def config_file(tmp_path, data_root, text="", name="run.yaml"):
    base = f"""
seed: 3
device: cpu
epochs: 2
batch_size: 8
workers: 0
data:
  type: hierarchical
  root: {data_root}
  image_size: 16
  resize_size: 16
  crop_scale: [0.5, 1.0]
  generate: {{superclasses: 2, subclasses: 2, train_per_class: 6, val_per_class: 3, size: 16, seed: 1}}
teacher: {{spec: "kdfast.distill.models:tiny_resnet", kwargs: {TINY}}}
student: {{spec: "kdfast.distill.models:tiny_resnet", kwargs: {TINY}}}
method: {{name: kd, options: {{alpha: 0.5, temperature: 4.0}}}}
optim: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}}
schedule: {{name: cosine, warmup_epochs: 0.5}}
log: {{progress: false}}
"""
    path = tmp_path / name
    path.write_text(base + text)
    return path


def load(tmp_path, data_root, text="", overrides=(), out="out"):
    return load_config(config_file(tmp_path, data_root, text), [f"output_dir={tmp_path / out}", *overrides])


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, data_root, monkeypatch):
    # KD with momentum, warm-up + cosine and random crops: every piece of state must come back.
    whole = load(tmp_path, data_root, out="whole")
    train(whole)
    reference = weights(tmp_path / "whole" / "last.pt")

    cut = load(tmp_path, data_root, out="cut")
    original = Trainer.train_epoch

    def killed_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    assert weights(tmp_path / "cut" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)
    summary = train(cut, resume=True)

    resumed = weights(tmp_path / "cut" / "last.pt")
    assert resumed["epoch"] == 2 and summary["epochs"] == 2
    assert_same_state(reference["model"], resumed["model"])
    assert_same_state(reference["method"], resumed["method"])
    assert reference["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for key, state in reference["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][key]["momentum_buffer"])
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in reference["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in resumed["history"]]
    # a different run is not a resumption
    with pytest.raises(ConfigError, match="optim.lr: 0.05 -> 0.1"):
        train(load(tmp_path, data_root, overrides=["optim.lr=0.1"], out="cut"), resume=True)


def test_two_torchrun_processes_take_the_same_steps_as_one(tmp_path, data_root):
    (tmp_path / "model.py").write_text(MODEL_FILE)
    spec = f"{tmp_path / 'model.py'}:net"
    text = f"teacher: {{spec: '{spec}'}}\nstudent: {{spec: '{spec}'}}\n"
    # 8 training images at batch 8: each epoch is one step of the whole set (4 images per process).
    overrides = ["data.few_shot=2", "epochs=2"]
    single = load(tmp_path, data_root, text, overrides, out="single")
    train(single)
    path = config_file(tmp_path, data_root, text, "ddp.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "scripts" / "distill.py"), "--config", str(path), f"output_dir={tmp_path / 'ddp'}", *overrides],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = weights(tmp_path / "single" / "last.pt"), weights(tmp_path / "ddp" / "last.pt")
    assert two["world_size"] == 2
    assert_same_state(one["model"], two["model"], atol=1e-6)
    for a, b in zip(one["history"], two["history"]):
        assert a["val_acc"] == b["val_acc"] and a["val_agreement"] == b["val_agreement"]
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-5)


def test_checkpoints_load_into_torchvision_and_the_dissection_loader(tmp_path, data_root):
    from kdfast.dissect.models import load_weights

    config = load(tmp_path, data_root, "teacher: {spec: null}\nstudent: {spec: resnet18}\nmethod: {name: ls}\n",
                  ["epochs=1"])
    summary = train(config)
    best = Path(summary["checkpoint"])
    checkpoint = weights(best)  # weights_only: no pickled objects
    assert {"model", "method", "optimizer", "scheduler", "scaler", "epoch", "config"} <= checkpoint.keys()
    model = torchvision.models.resnet18(num_classes=4)
    model.load_state_dict(checkpoint["model"])
    load_weights(torchvision.models.resnet18(num_classes=4), best)
    rows = (tmp_path / "out" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["epoch", "lr", "train_ls"] and len(rows) == 2
    assert (tmp_path / "out" / "config.yaml").is_file() and (tmp_path / "out" / "summary.json").is_file()
    assert summary["best_val_agreement"] is None  # no teacher


@pytest.mark.parametrize(
    "text, overrides, key",
    [
        ("teacher: {spec: null}\n", [], "teacher.spec"),
        ("", ["method.options.alpha=2.0"], "method.options"),
        ("", ["method.options.beta=1"], "method.options"),
        ("", ["method.name=distil"], "method.name"),
        ("", ["teacher.weights=missing.pt"], "teacher.weights"),
        ("", ["student.spec=resnet_18"], "student.spec"),
        ("", ["student.spec=kdfast.distill.models:no_such_model"], "student.spec"),
        ("", ["student.kwargs.depth=3"], "student"),
        ("", ["batch_size=7", "data.few_shot=2"], None),  # fine: 7 does not need to divide the data
        ("", ["data.few_shot=50"], "data"),
        ("", ["frozen_explanations=true"], "frozen_explanations"),
        ("", ["log.tensorboard=true"], "log.tensorboard"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, data_root, text, overrides, key):
    if key == "log.tensorboard" and importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed: no error to check")
    config = load(tmp_path, data_root, text, ["epochs=1", *overrides])
    if key is None:
        train(config)
        return
    with pytest.raises(ConfigError) as info:
        train(config)
    assert str(info.value).startswith(key), str(info.value)


def test_model_output_shape_and_output_dir_reuse_are_checked(tmp_path, data_root):
    (tmp_path / "model.py").write_text(MODEL_FILE)
    with pytest.raises(ConfigError, match=r"student.spec: .* outputs \(2, 5\)"):
        train(load(tmp_path, data_root, f"student: {{spec: '{tmp_path / 'model.py'}:wrong_classes'}}\n", ["epochs=1"]))
    config = load(tmp_path, data_root, "", ["epochs=1"], out="reused")
    with pytest.raises(ConfigError, match="output_dir: --resume needs"):
        train(config, resume=True)
    train(config)
    with pytest.raises(ConfigError, match="output_dir: .* already holds a run"):
        train(config)


def test_e2kd_with_frozen_explanations_and_bf16_autocast(tmp_path, data_root):
    pytest.importorskip("kdfast.distill.e2kd")
    config = load(tmp_path, data_root, "method: {name: e2kd_gradcam, options: {tau: 1.0, lam: 1.0}}\n",
                  ["epochs=1", "frozen_explanations=true", "amp=true"])
    summary = train(config)
    store = tmp_path / "out" / "frozen_explanations"
    assert (store / "meta.json").is_file()
    row = weights(tmp_path / "out" / "last.pt")["history"][0]
    assert math.isfinite(row["train_kd"]) and math.isfinite(row["train_explanation"])
    assert 0 <= summary["best_val_agreement"] <= 1


def test_lr_schedule_matches_its_formulas():
    steps, epochs, lr = 7, 10, 0.4
    step_decay = LRSchedule(ScheduleConfig(name="step", milestones=[3, 6], gamma=0.1), lr, steps, epochs)
    assert [step_decay(s) for s in (0, 20, 21, 41, 42, 69)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = LRSchedule(ScheduleConfig(name="cosine", warmup_epochs=2, warmup_start_factor=0.01, min_lr=0.04),
                        lr, steps, epochs)
    for s in range(steps * epochs + 1):
        if s < 14:
            expected = 0.01 + 0.99 * s / 14
        else:
            expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 14) / (70 - 14)))
        assert cosine(s) == pytest.approx(expected, abs=1e-12), s
    assert LRSchedule(ScheduleConfig(name="constant"), lr, steps, epochs)(33) == 1.0


def unitwise_norm_loop(x):
    """Per output unit (rows of dim 0) for tensors with >= 2 dims, the whole tensor otherwise."""
    if x.dim() <= 1:
        return torch.full_like(x, float(x.norm()))
    norms = torch.stack([x[i].norm() for i in range(x.shape[0])])
    return norms.view(-1, *([1] * (x.dim() - 1))).expand_as(x)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 3, 3), (1,), (4, 1, 1, 1)])
def test_adaptive_clipping_matches_its_definition(shape, gen):
    clip, eps = 0.05, 1e-3
    p = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64))
    if shape == (4, 1, 1, 1):
        p.data[0] = 0  # a zero unit: the eps floor applies
    p.grad = torch.randn(shape, generator=gen, dtype=torch.float64) * torch.rand(shape, generator=gen,
                                                                                 dtype=torch.float64) * 3
    p.grad.view(-1)[0] = 0 if len(shape) == 1 else p.grad.view(-1)[0]
    grad = p.grad.clone()
    max_norm = unitwise_norm_loop(p.data).clamp(min=eps) * clip
    grad_norm = unitwise_norm_loop(grad)
    expected = torch.where(grad_norm > max_norm, grad * max_norm / grad_norm, grad)
    adaptive_clip_([p], clip, eps)
    torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-15)
    p.grad = torch.zeros(shape, dtype=torch.float64)
    adaptive_clip_([p], clip, eps)  # zero gradients stay zero (no 0/0)
    assert torch.equal(p.grad, torch.zeros(shape, dtype=torch.float64))


def test_embedded_default_micro(tmp_path, monkeypatch, capsys):
    from kdfast.cli import distill as cli  # scripts/distill.py's command line
    monkeypatch.setenv("KDFAST_CACHE", str(tmp_path / "cache"))
    has_e2kd = importlib.util.find_spec("kdfast.distill.e2kd") is not None
    runs = [r for r in cli.EMBEDDED_RUNS if r != "e2kd_gradcam" or has_e2kd]
    micro = ["epochs=1", "data.generate.train_per_class=3", "data.generate.val_per_class=2",
             "data.generate.size=16", "data.image_size=16", "data.resize_size=16", "log.progress=false",
             "student.kwargs.widths=[4,4,8,8]", "teacher.kwargs.widths=[4,4,8,8]", "batch_size=12"]
    out = tmp_path / "distill_out"
    assert cli.main(["--out", str(out), "--runs", ",".join(runs), *micro]) == 0
    table = capsys.readouterr().out
    for run in runs:
        assert (out / run / "best.pt").is_file()
        assert any(line.startswith(run + " ") for line in table.splitlines()), table
    assert (out / "summary.csv").is_file()
    # a second start reuses the finished runs
    stamp = (out / "kd" / "best.pt").stat().st_mtime_ns
    assert cli.main(["--out", str(out), "--runs", "teacher,kd", *micro]) == 0
    assert (out / "kd" / "best.pt").stat().st_mtime_ns == stamp
    assert cli.main(["--config", str(tmp_path / "none.yaml")]) == 2

