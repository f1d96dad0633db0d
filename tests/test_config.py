"""The distillation config schema: key-path errors, overrides, inheritance, and every shipped config."""
import importlib.util
from pathlib import Path

import pytest

from kdfast.distill import build_method
from kdfast.distill.config import Config, ConfigError, apply_overrides, config_yaml, from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MINIMAL = {"data": {"type": "hierarchical"}, "student": {"spec": "resnet18"}}


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_config_has_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, "data: {type: hierarchical}\n"))
    assert isinstance(config, Config)
    assert config.name == "run" and config.output_dir == str(Path("runs") / "run")
    assert (config.epochs, config.batch_size, config.optim.name, config.optim.lr) == (100, 256, "sgd", 0.1)
    assert config.schedule.milestones == [30, 60, 90] and config.method.name == "scratch"
    # the resolved YAML reads back to the same config
    assert from_dict(load_config(write(tmp_path, config_yaml(config), "again.yaml")).to_dict()) == config


@pytest.mark.parametrize(
    "text, path",
    [
        ("epochz: 3\n", "epochz"),
        ("optim: {lrr: 0.1}\n", "optim.lrr"),
        ("data: {type: hierarchical, generate: {sizes: 3}}\n", "data.generate.sizes"),
        ("optim: {lr: fast}\n", "optim.lr"),
        ("epochs: 1.5\n", "epochs"),
        ("epochs: true\n", "epochs"),
        ("amp: 'yes'\n", "amp"),
        ("optim: {name: rmsprop}\n", "optim.name"),
        ("schedule: {milestones: [1, a]}\n", "schedule.milestones[1]"),
        ("schedule: {milestones: 30}\n", "schedule.milestones"),
        ("method: {options: [1, 2]}\n", "method.options"),
        ("teacher: resnet34\n", "teacher"),
        ("data: {type: imagefolder}\n", "data.root"),
        ("data: {type: hierarchical, crop_scale: [0.5, 0.2]}\n", "data.crop_scale"),
        ("data: {type: hierarchical, input_encoding: bcos}\n", "data.normalize"),
        ("data: {type: hierarchical, std: [0.2, 0.0, 0.2]}\n", "data.std"),
        ("batch_size: 0\n", "batch_size"),
        ("optim: {weight_decay: -1.0}\n", "optim.weight_decay"),
        ("schedule: {milestones: [60, 30]}\n", "schedule.milestones"),
        ("student: {spec: null}\n", "student.spec"),
        ("frozen_explanations: true\n", "frozen_explanations"),
        ("device: tpu\n", "device"),
    ],
)
def test_bad_keys_and_values_name_the_key_path(tmp_path, text, path):
    body = text if text.startswith("data:") else "data: {type: hierarchical}\n" + text
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, body))
    assert str(info.value).startswith(path + ":"), str(info.value)


def test_float_keys_accept_exponent_strings(tmp_path):
    # PyYAML reads 1e-4 (no dot) as a string.
    config = load_config(write(tmp_path, "data: {type: hierarchical}\noptim: {weight_decay: 1e-4, lr: 2}\n"))
    assert config.optim.weight_decay == 1e-4 and isinstance(config.optim.lr, float) and config.optim.lr == 2.0


def test_overrides_set_dotted_keys_as_yaml(tmp_path):
    path = write(tmp_path, "data: {type: hierarchical}\nmethod: {name: kd, options: {alpha: 0.5}}\n")
    config = load_config(path, ["optim.lr=0.05", "schedule.milestones=[1, 2]", "teacher.spec=resnet34",
                                "teacher.spec=null", "method.options.temperature=2", "data.few_shot=5",
                                "name=other"])
    assert config.optim.lr == 0.05 and config.schedule.milestones == [1, 2]
    assert config.teacher.spec is None and config.data.few_shot == 5 and config.name == "other"
    assert config.method.options == {"alpha": 0.5, "temperature": 2}


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "optim.lrr:"),
        ("optim.lr=abc", "optim.lr:"),
        ("epochs.x=1", "epochs.x:"),
        ("lr", "override 'lr'"),
        ("=3", "override '=3'"),
        ("optim..lr=1", "override 'optim..lr=1'"),
    ],
)
def test_bad_overrides_are_named(tmp_path, override, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "data: {type: hierarchical}\n"), [override])
    assert message in str(info.value)


def test_overrides_do_not_touch_their_input():
    raw = {"optim": {"lr": 0.1}}
    assert apply_overrides(raw, ["optim.lr=0.2"]) == {"optim": {"lr": 0.2}}
    assert raw == {"optim": {"lr": 0.1}}


def test_base_inheritance_merges_sections_and_replaces_options(tmp_path):
    write(tmp_path, "data: {type: hierarchical, image_size: 64}\noptim: {lr: 0.3, momentum: 0.5}\n"
                    "method: {name: kd, options: {alpha: 0.5, temperature: 4.0}}\n", "parent.yaml")
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub", "base: ../parent.yaml\noptim: {lr: 0.2}\nmethod: {options: {alpha: 0.1}}\n",
                  "child.yaml")
    config = load_config(child)
    assert config.data.image_size == 64 and config.optim.lr == 0.2 and config.optim.momentum == 0.5
    assert config.method.name == "kd" and config.method.options == {"alpha": 0.1}
    assert config.name == "child"


def test_base_cycles_and_missing_files_are_errors(tmp_path):
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n", "broken.yaml"))
    with pytest.raises(ConfigError, match="mapping of keys"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"))


# Distillation configs only: configs/study/ holds study files (kdfast.study's schema, tested there).
SHIPPED = sorted(p for p in CONFIGS.rglob("*.yaml") if p.name not in ("common.yaml",) and not p.name.startswith("base")
                 and "study" not in p.relative_to(CONFIGS).parts)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_load_and_their_methods_accept_their_options(path):
    config = load_config(path)
    options = dict(config.method.options)
    if config.method.name == "crd":
        options["num_samples"] = 100  # filled in by the trainer from the dataset
    if config.method.name.startswith("e2kd") and importlib.util.find_spec("kdfast.distill.e2kd") is None:
        pytest.skip("kdfast.distill.e2kd is not available")
    method = build_method(config.method.name, **options)
    assert method.name == config.method.name


def test_table1_and_e2kd_settings():
    """The papers' settings, as the shipped configs spell them."""
    kd = load_config(CONFIGS / "kd.yaml")
    assert (kd.teacher.spec, kd.student.spec, kd.epochs, kd.batch_size) == ("resnet34", "resnet18", 100, 256)
    assert (kd.optim.name, kd.optim.lr, kd.optim.weight_decay, kd.schedule.milestones) == ("sgd", 0.1, 1e-4, [30, 60, 90])
    assert kd.method.options == {"alpha": 0.5, "temperature": 4.0}
    assert load_config(CONFIGS / "selfkd.yaml").teacher.spec == "resnet18"
    assert [load_config(CONFIGS / f"ls_teacher_kd_t{t}.yaml").method.options["temperature"] for t in (1, 2, 4)] == [1, 2, 4]
    assert load_config(CONFIGS / "at_kd.yaml").method.options["logit_kd"] is True
    for name, shots, batch, epochs in (("e2kd_gradcam", None, 256, 200), ("e2kd_gradcam_50shot", 50, 32, 250),
                                       ("e2kd_gradcam_200shot", 200, 64, 125), ("e2kd_bcos_50shot", 50, 32, 250)):
        config = load_config(CONFIGS / f"{name}.yaml")
        assert (config.data.few_shot, config.batch_size, config.epochs) == (shots, batch, epochs), name
        assert config.schedule.name == "cosine" and config.schedule.warmup_epochs == 5
    bcos = load_config(CONFIGS / "e2kd_bcos.yaml")
    assert (bcos.optim.name, bcos.optim.weight_decay, bcos.optim.grad_clip) == ("adam", 0.0, "agc")
    assert bcos.data.input_encoding == "bcos" and not bcos.data.normalize
