"""First use: commands fail fast with one line naming the flag, the embedded defaults need no arguments."""
import pytest
import torch

from dissect_helpers import REPO
from kdfast.dissect import cli


def test_pooled_layer_is_refused(tmp_path):
    from kdfast.dissect.models import LayerRecorder

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    recorder = LayerRecorder(model, ["1"])
    with pytest.raises(ValueError, match=r"--layers 1: the layer outputs 1x1 maps"):
        recorder(torch.zeros(2, 3, 8, 8))
    assert cli.parse_args([]).seed == 0


@pytest.mark.parametrize("layer, error", [
    ("avgpool", r"--layers avgpool: the layer outputs 1x1 maps"),
    ("layer4", r"category\.csv"),  # a usable layer: the Broden's own defect comes next
])
def test_layer_check_comes_before_packing_the_broden(tmp_path, layer, error):
    """Fail-fast order: arguments, then model/layers, then data; this Broden has an index and nothing else, so
    packing it would fail."""
    (tmp_path / "broden").mkdir()
    (tmp_path / "broden" / "index.csv").write_text("image,split,ih,iw,sh,sw\nimages/a.jpg,train,64,64,32,32\n")
    with pytest.raises(ValueError, match=error):
        cli.main(["--model", "resnet18", "--layers", layer, "--broden", str(tmp_path / "broden"),
                  "--out", str(tmp_path / "out"), "--quiet"])
    assert not (tmp_path / "broden" / ".kdfast_cache").exists()


@pytest.mark.parametrize("script, args, made", [
    ("make_synthetic_broden.py", ["--images", "2", "--size", "16", "--quiet"], "data/synthetic_broden/index.csv"),
    ("make_synthetic_shapes.py", ["--train", "2", "--test", "1", "--size", "32", "--workers", "1"],
     "data/synthetic_shapes/meta.json"),
])
def test_dataset_scripts_have_a_default_out(tmp_path, monkeypatch, script, args, made):
    import runpy

    monkeypatch.chdir(tmp_path)
    main = runpy.run_path(str(REPO / "scripts" / script))["main"]
    main(args)
    assert (tmp_path / made).is_file()


def test_distill_threads_flag_is_checked_and_leaves_the_callers_threads(capsys):
    import runpy

    main = runpy.run_path(str(REPO / "scripts" / "distill.py"))["main"]
    threads = torch.get_num_threads()
    assert main(["--threads", "0"]) == 2
    assert "--threads: expected at least 1, got 0" in capsys.readouterr().err
    assert main(["--threads", "1", "--print-config", "--runs", "teacher"]) == 0
    assert torch.get_num_threads() == threads


def test_evaluate_mistyped_students_dir_is_an_error(tmp_path):
    import runpy

    main = runpy.run_path(str(REPO / "scripts" / "evaluate.py"))["main"]
    with pytest.raises(FileNotFoundError, match="--students-dir .*typo: no distillation runs"):
        main(["--students-dir", str(tmp_path / "typo"), "--out", str(tmp_path / "out")])


def test_scale_mismatch_between_training_and_broden_is_warned(tmp_path):
    (tmp_path / "index.csv").write_text("image,split,ih,iw,sh,sw\nimages/a.jpg,train,224,224,112,112\n")
    assert "trained on 32-px images, the Broden's are 224 px" in cli.scale_warning(32, tmp_path)
    assert cli.scale_warning(128, tmp_path) is None
