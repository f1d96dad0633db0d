"""The synthetic world and the one model registry: a model trained in the world has concept detectors on the
world's Broden; checkpoints rebuild their model from the path alone; a wrong architecture is named."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from kdfast.data import synthetic_world as world
from kdfast.data.broden import BrodenDataset
from kdfast.dissect import cli
from kdfast.evaluate.models import load_classifier
from kdfast.models import registry
from kdfast.models.world import default_world_config

TINY = "kdfast.distill.models:tiny_resnet"
# One thread for the dissections too: the detector counts compared below must not depend on the thread count.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(best.pt, world Broden) of the world's default student trained briefly on a small world."""
    from kdfast.distill.trainer import train

    root = tmp_path_factory.mktemp("world")
    overrides = ["epochs=8", "batch_size=32", f"data.root={root / 'data'}", "data.generate.train_per_class=30",
                 "data.generate.val_per_class=5", "workers=0"]
    # Trained on one thread: the float sums of training, hence the model and its detector counts, depend on the
    # thread count (with OMP_NUM_THREADS=2 the object-detector comparison below came out 0 vs 0).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train(default_world_config(root / "run", overrides))
    finally:
        torch.set_num_threads(threads)
    broden = world.write_world_broden(root / "broden", images=60, size=world.DEFAULT_SIZE, seed=1, progress=False)
    return summary["checkpoint"], broden


def test_trained_model_has_concept_detectors_from_the_checkpoint_alone(trained, tmp_path):
    checkpoint, broden = trained
    # No --model and no --preprocess: the checkpoint names its architecture and normalisation.
    result = cli.main(["--weights", str(checkpoint), "--broden", str(broden), "--layers", "layer4", "--out",
                       str(tmp_path / "out"), "--quiet", "--batch-size", "16"])
    found = result.tallies["layer4"][0].detectors(result.config.iou_threshold)
    assert found.total >= 1, f"no concept detector at layer4: {found}"
    info = registry.checkpoint_info(checkpoint)
    assert result.config.model == TINY and list(result.config.mean) == info.mean

    # Training in the world is what makes object detectors: the same network at its random initial weights
    # (a checkpoint with the trained one's config) has fewer.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    untrained = registry.build_model(info.spec, info.num_classes, info.kwargs, seed=0)
    random_checkpoint = tmp_path / "random.pt"
    torch.save({"model": untrained.state_dict(), "config": saved["config"], "classes": saved["classes"]},
               random_checkpoint)
    baseline = cli.main(["--weights", str(random_checkpoint), "--broden", str(broden), "--layers", "layer4", "--out",
                         str(tmp_path / "random"), "--quiet", "--batch-size", "16"])
    random_found = baseline.tallies["layer4"][0].detectors(baseline.config.iou_threshold)
    assert found.per_category["object"] > random_found.per_category["object"], (found, random_found)


def test_wrong_architecture_is_named_before_any_work(trained, tmp_path):
    checkpoint, broden = trained
    with pytest.raises(ValueError, match=rf"--model resnet18 does not match .*'{TINY}'"):
        cli.main(["--model", "resnet18", "--weights", str(checkpoint), "--broden", str(broden), "--out",
                  str(tmp_path / "out"), "--quiet"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=rf"holds a '{TINY}' model.*not the 'resnet18'"):
        load_classifier(checkpoint, 12, arch="resnet18")
    script = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_cli_world", script)
    evaluate_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_cli)
    with pytest.raises(ValueError, match=rf"--arch resnet18 does not match .*'{TINY}'"):
        evaluate_cli.main(["--models", str(checkpoint), "--arch", "resnet18", "--out", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()


def test_checkpoint_round_trip(trained):
    checkpoint, _ = trained
    model, info = registry.load_checkpoint_model(checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert info.num_classes == 12 and info.classes == [name for name, _ in world.class_names()]
    assert info.image_size == world.DEFAULT_SIZE and info.kwargs["widths"] == [8, 16, 32, 64]
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    evaluated, config = load_classifier(checkpoint, num_classes=None)
    assert config["student"]["spec"] == TINY and not evaluated.training
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), evaluated(x))


def test_build_model_specs_and_seeds(tmp_path):
    a = registry.build_model(TINY, 5, {"widths": [4, 4, 4, 4]}, seed=3)
    b = registry.build_model(TINY, 5, {"widths": [4, 4, 4, 4]}, seed=3)
    c = registry.build_model(TINY, 5, {"widths": [4, 4, 4, 4]}, seed=4)
    assert a.fc.out_features == 5
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    registry.build_model(TINY, 5, seed=9)
    assert torch.equal(torch.rand(3), expected)  # the caller's random state is left as it was

    factory = tmp_path / "factory.py"
    factory.write_text("import torch\n\ndef plain():\n    return torch.nn.Linear(2, 3)\n\n"
                       "def sized(num_classes, width=2):\n    return torch.nn.Linear(width, num_classes)\n")
    assert registry.build_model(f"{factory}:plain", num_classes=7).out_features == 3  # takes no num_classes
    assert registry.build_model(f"{factory}:sized", 7, {"width": 4}).in_features == 4
    assert registry.build_model("resnet18", 4).fc.out_features == 4
    with pytest.raises(ValueError, match=r"^student.spec: unknown model 'resnet_18'.*Did you mean: resnet18"):
        registry.build_model("resnet_18", where="student.spec")
    with pytest.raises(ValueError, match=r"^--arch: building .*sized.* failed"):
        registry.build_model(f"{factory}:sized", 3, {"depth": 2}, where="--arch")
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_module'"):
        registry.build_model("no_such_module:build")


def test_plain_state_dict_needs_a_spec(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(registry.build_model(TINY, 3, {"widths": [4, 4, 4, 4]}).state_dict(), plain)
    assert registry.checkpoint_info(plain) is None
    with pytest.raises(ValueError, match="plain state dict"):
        registry.load_checkpoint_model(plain)
    model, info = registry.load_checkpoint_model(plain, TINY, {"widths": [4, 4, 4, 4]}, 3)
    assert info is None and not model.training


def test_world_labels_follow_the_drawing():
    image, planes, image_labels, split = world.broden_sample(5, 48, seed=2)
    again = world.broden_sample(5, 48, seed=2)
    assert np.array_equal(image, again[0]) and split == again[3]
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    if image_labels.get("scene"):
        objects = planes["object"][0]
        assert objects.shape == (24, 24) and (objects > 0).all()  # every pixel is an object or the background
        in_category = {n for n, cats in enumerate(world.LABEL_CATEGORIES) if "object" in cats}
        assert set(np.unique(objects)) <= in_category
        parts, materials = planes["part"][0], planes["material"][0]
        assert ((parts > 0) <= (materials > 0)).all()  # every part has a material
    names = [n for n, _ in world.class_names(2, 3)]
    assert names == sorted(names) and len(names) == 6
    first = world.classification_image("cat", 0, 32, seed=0)
    assert not np.array_equal(first, world.classification_image("dog", 0, 32, seed=0))
    assert np.array_equal(first, world.classification_image("cat", 0, 32, seed=0))


def test_world_broden_reads_back(tmp_path):
    out = world.write_world_broden(tmp_path / "b", images=12, size=32, seed=0, progress=False)
    dataset = BrodenDataset(out)
    assert len(dataset) == 12
    assert set(dataset.categories) == {"color", "object", "part", "material", "scene", "texture"}


def test_in_memory_data_type_goes_with_datasets_in_code(tmp_path):
    from kdfast.distill.config import ConfigError, from_dict
    from kdfast.distill.trainer import in_memory_datasets, train

    config = from_dict({"output_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 4, "workers": 0,
                        "data": {"type": "memory", "augment": False, "normalize": False},
                        "student": {"spec": TINY, "kwargs": {"widths": [4, 4, 4, 4]}},
                        "log": {"progress": False, "epoch_lines": False}})
    with pytest.raises(ConfigError, match="data.type: 'memory'"):
        train(config)
    with pytest.raises(ValueError, match=r"val_images: expected a float \(N, C, H, W\) tensor"):
        in_memory_datasets(torch.rand(4, 3, 8, 8), torch.zeros(4), torch.zeros(4, 8, 8), torch.zeros(4))
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    summary = train(config, datasets=in_memory_datasets(images, labels, images[:4], labels[:4]))
    assert summary["epochs"] == 1 and 0 <= summary["final_val_acc"] <= 1
