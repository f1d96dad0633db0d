import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from kdfast.data.synthetic_shapes import make_synthetic_shapes
from kdfast.evaluate.data import image_folder_data, synthetic_shapes_data
from kdfast.evaluate.fallback import train_fallback_models
from kdfast.evaluate.models import load_classifier

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"


def _cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny shapes data and teacher / scratch / KD checkpoints trained one epoch on it."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval")
    data_root = make_synthetic_shapes(root / "shapes", {"train": 40, "test": 20}, size=32, seed=0)
    paths = train_fallback_models(synthetic_shapes_data(data_root), root / "models", teacher_epochs=1,
                                  student_epochs=1, batch_size=10)
    return root, data_root, paths


def test_cli_writes_json_figures_and_report(trained, tmp_path):
    root, data_root, paths = trained
    out = tmp_path / "out"
    results = _cli().main([
        "--models", str(paths["scratch"]), str(paths["kd"]), "--teacher", str(paths["teacher"]),
        "--data", str(data_root), "--out", str(out),
        "--metrics", "agreement,entropy,fiveband,diffroar,lossgrad,epg,shift",
        "--roar-fractions", "0.5", "--roar-epochs", "1", "--max-shift", "2", "--shift-images", "4",
        "--visual-samples", "4", "--num-train", "20",
    ])
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["metrics"]) == {"agreement", "entropy", "fiveband", "diffroar", "lossgrad", "epg", "shift"}
    assert set(saved["models"]) == {"scratch", "kd"} and saved["skipped"] == {}
    for name in ("scratch", "kd"):
        assert 0 <= saved["metrics"]["agreement"][name] <= 1
        bands = saved["metrics"]["fiveband"]["bands"][name]
        assert len(bands["recall"]["per_step"]) == 56 and bands["recall"]["max"] >= bands["recall"]["mean"]
        split = saved["metrics"]["fiveband"]["binary_splits"][name]["0|12"]
        assert split["excluded"] == 2 and 0 <= split["auroc"] <= 1  # the two empty-class images
        roar = saved["metrics"]["diffroar"][name]
        assert set(roar["fractions"]) == {"0.5"} and -1 <= roar["mean"] <= 1
        assert saved["metrics"]["shift"][name]["cosine"][0] == pytest.approx(1.0)
        assert 0 <= saved["metrics"]["epg"][name]["epg"] <= 1
    for figure in ("radar", "saliency", "diffroar", "lossgrad", "shift"):
        path = out / saved["figures"][figure]
        assert path.is_file() and path.stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "Five-band scores" in html and "figures/radar.png" in html and "scratch" in html
    entropy = results["metrics"]["entropy"]
    assert entropy["samples"] >= 0 and set(entropy["models"]) == {"scratch", "kd"}


def test_cli_default_metrics_skip_what_the_data_lacks(trained, tmp_path):
    root, data_root, paths = trained
    results = _cli().main(["--models", str(paths["kd"]), "--data", str(data_root), "--out", str(tmp_path / "o"),
                           "--metrics", "lossgrad"])
    assert list(results["metrics"]) == ["lossgrad"]
    cli = _cli()
    with pytest.raises(ValueError, match="metric 'agreement' needs a teacher"):
        cli.main(["--models", str(paths["kd"]), "--data", str(data_root), "--out", str(tmp_path / "o"),
                  "--metrics", "agreement"])
    with pytest.raises(ValueError, match="unknown metric"):
        cli.main(["--models", str(paths["kd"]), "--data", str(data_root), "--out", str(tmp_path / "o"),
                  "--metrics", "fidelity"])


def test_plain_state_dicts_need_an_architecture(tmp_path):
    import torchvision

    plain = tmp_path / "plain.pt"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=10).state_dict(), plain)
    with pytest.raises(ValueError, match="pass --arch"):
        load_classifier(plain, 10)
    model, config = load_classifier(plain, 10, arch="resnet18")
    assert config is None and model.fc.out_features == 10 and not model.training
    with pytest.raises(ValueError, match="does not fit the model"):
        load_classifier(plain, 10, arch="resnet34")


def test_image_folder_data_with_categories_and_boxes(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for k, name in enumerate(("a", "b")):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 10), (40 * k, 0, 0)).save(tmp_path / split / name / "0.png")
    (tmp_path / "categories.csv").write_text("index,category\n0,x\n1,other\n")
    (tmp_path / "boxes.csv").write_text("image,x0,y0,x1,y1\na/0.png,0,0,10,5\n")
    data = image_folder_data(tmp_path, 8, boxes=tmp_path / "boxes.csv")
    assert data.test_images.shape == (2, 3, 8, 8) and data.train_images.shape == (2, 3, 8, 8)
    assert data.category_map.class_category == ("x", None)
    assert data.box_masks[0].sum() == 4 * 4 and data.box_masks[1].sum() == 0
    (tmp_path / "bad.csv").write_text("image,x0,y0,x1,y1\nc/0.png,0,0,1,1\n")
    with pytest.raises(ValueError, match="line 2: image 'c/0.png' is not in"):
        image_folder_data(tmp_path, 8, boxes=tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("image,x0,y0,x1,y1\na/0.png,0,0,30,5\n")
    with pytest.raises(ValueError, match="outside the 20×10 image"):
        image_folder_data(tmp_path, 8, boxes=tmp_path / "bad.csv")
    assert math.isclose(float(data.test_images[1, 0].mean()), 40 / 255, abs_tol=1e-6)
