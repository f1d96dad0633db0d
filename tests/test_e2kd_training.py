"""The e2KD settings' training options: mixup (teacher and student see the same mixed image), the Waterbirds /
VOC data types in the trainer, data-free distillation, the evaluation of trained runs."""
import pytest
import torch
from torch import nn

from kdfast.distill import build_method
from kdfast.distill.config import ConfigError, from_dict
from kdfast.distill.trainer import Trainer

TINY = {"widths": [4, 4, 8, 8]}


class Recorder(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.linear = nn.Linear(3, classes)
        self.seen = []

    def forward(self, images):
        self.seen.append(images.detach().clone())
        return self.linear(images.mean(dim=(2, 3)))


def test_mixup_shows_teacher_and_student_the_same_mixed_image():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 5, 5)
    batch = {"images": images, "targets": torch.tensor([0, 1, 2, 0]), "indices": torch.arange(4)}
    student, teacher = Recorder(), Recorder()
    method = build_method("mixup", alpha=1.0, base="kd", base_options={"alpha": 1.0, "temperature": 2.0})
    torch.manual_seed(5)
    method(student, teacher, batch)
    torch.manual_seed(5)  # redraw λ and the pairing as mix_images does
    lam = float(torch.distributions.Beta(torch.tensor(1.0, dtype=torch.float64),
                                         torch.tensor(1.0, dtype=torch.float64)).sample())
    perm = torch.randperm(4)
    expected = lam * images + (1 - lam) * images[perm]
    assert len(teacher.seen) == 1 and len(student.seen) == 1
    torch.testing.assert_close(teacher.seen[0], student.seen[0], rtol=0, atol=0)
    torch.testing.assert_close(student.seen[0], expected)
    assert not torch.equal(student.seen[0], images)
    with pytest.raises(ValueError, match="kd with alpha 0.5 has a cross-entropy term"):
        build_method("mixup", base="kd", base_options={"alpha": 0.5})(student, teacher, batch)
    with pytest.raises(ValueError, match="method 'scratch' trains on the labels"):
        build_method("mixup", base="scratch")(student, teacher, batch)
    # multi-label targets are mixed with the images, and any base works
    multi = dict(batch, targets=torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]))
    out = build_method("mixup", base="scratch")(student, None, multi)
    assert set(out.terms) == {"ce"}


def _config(tmp_path, data, method, extra=None):
    raw = {"name": "t", "output_dir": str(tmp_path / "out"), "epochs": 1, "batch_size": 8, "workers": 0,
           "device": "cpu", "log": {"progress": False}, "data": data, "method": method,
           "student": {"spec": "kdfast.distill.models:tiny_resnet", "kwargs": TINY},
           "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}, "schedule": {"name": "constant"}}
    raw.update(extra or {})
    return from_dict(raw)


WATERBIRDS = {"type": "waterbirds", "image_size": 16,
              "synthetic": {"train_per_class": 8, "eval_per_group": 2, "correlation": 0.75, "size": 24}}
VOC = {"type": "voc", "image_size": 16, "synthetic": {"num_classes": 3, "train": 8, "val": 4, "test": 4, "size": 24}}


def test_trainer_runs_guided_teachers_on_waterbirds_and_voc_and_they_evaluate(tmp_path):
    from kdfast.evaluate.e2kd_settings import boxed_runs, evaluate_run

    wb = dict(WATERBIRDS, root=str(tmp_path / "wb"))
    summary = Trainer(_config(tmp_path / "a", wb, {"name": "guided", "options": {"weight": 0.1}})).fit()
    assert 0 <= summary["best_val_acc"] <= 1
    row = evaluate_run(summary["checkpoint"], "test")
    assert {"acc", "worst_group_acc", "in_distribution_acc", "out_of_distribution_acc"} <= set(row)
    assert row["worst_group_acc"] <= row["acc"] + 1e-12
    assert boxed_runs([summary["checkpoint"]]) and not boxed_runs([str(tmp_path / "none.pt")])

    voc = dict(VOC, root=str(tmp_path / "voc"))
    summary = Trainer(_config(tmp_path / "b", voc, {"name": "guided", "options": {"loss": "l1"}})).fit()
    row = evaluate_run(summary["checkpoint"], "test")
    assert 0 <= row["f1"] <= 1 and row["explained"] > 0 and 0 <= row["epg"] <= 1 and 0 <= row["iou"] <= 1


def test_data_free_needs_a_label_free_method_and_trains_on_other_images(tmp_path):
    from kdfast.data.voc import generate_voc_style

    other = generate_voc_style(tmp_path / "voc", num_classes=2, train=6, val=1, test=1, size=16)
    wb = dict(WATERBIRDS, root=str(tmp_path / "wb"), distill_images=str(other / "JPEGImages"))
    teacher = {"spec": "kdfast.distill.models:tiny_resnet", "kwargs": TINY}
    with pytest.raises(ConfigError, match="data-free distillation .* kd with alpha 0.5"):
        Trainer(_config(tmp_path / "a", wb, {"name": "kd", "options": {"alpha": 0.5}}, {"teacher": teacher}))
    trainer = Trainer(_config(tmp_path / "b", wb, {"name": "kd", "options": {"alpha": 1.0}}, {"teacher": teacher}))
    assert len(trainer.train_set) == 8 and trainer.classes == ["landbird", "waterbird"]
    trainer.fit()
    with pytest.raises(ConfigError, match="data.distill_images: image folder .* does not exist"):
        Trainer(_config(tmp_path / "c", dict(wb, distill_images=str(tmp_path / "none")),
                        {"name": "kd", "options": {"alpha": 1.0}}, {"teacher": teacher}))



def test_data_free_images_are_generated_by_distill_synthetic(tmp_path):
    voc = tmp_path / "voc"
    params = {"type": "voc", "root": str(voc), "num_classes": 2, "train": 5, "val": 1, "test": 1, "size": 16}
    wb = dict(WATERBIRDS, root=str(tmp_path / "wb"), distill_images=str(voc / "JPEGImages"),
              distill_synthetic=params)
    kd = {"name": "kd", "options": {"alpha": 1.0}}
    teacher = {"teacher": {"spec": "kdfast.distill.models:tiny_resnet", "kwargs": TINY}}
    assert not voc.exists()
    trainer = Trainer(_config(tmp_path / "a", wb, kd, teacher))
    assert len(trainer.train_set) == 7 and (voc / "Annotations").is_dir()  # the 5 + 1 + 1 generated images
    with pytest.raises(ConfigError, match="data.distill_synthetic: needs data.distill_images"):
        _config(tmp_path / "b", dict(wb, distill_images=None), kd, teacher)
    with pytest.raises(ConfigError, match="data.distill_synthetic.type: expected waterbirds or voc .*got 'coco'"):
        _config(tmp_path / "c", dict(wb, distill_synthetic=dict(params, type="coco")), kd, teacher)
    with pytest.raises(ConfigError, match="data.distill_synthetic: .*colour"):
        Trainer(_config(tmp_path / "d", dict(wb, distill_synthetic=dict(params, colour=1)), kd, teacher))

def test_boxed_data_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.root: required for data.type voc"):
        _config(tmp_path, {"type": "voc"}, {"name": "scratch"})
    with pytest.raises(ConfigError, match="data.synthetic: only for data.type waterbirds or voc"):
        _config(tmp_path, {"type": "imagefolder", "root": "x", "synthetic": {}}, {"name": "scratch"})
    bad = dict(WATERBIRDS, root=str(tmp_path / "wb"), synthetic={"train_per_class": 8, "colour": 1})
    with pytest.raises(ConfigError, match="data.synthetic: .*colour"):
        Trainer(_config(tmp_path, bad, {"name": "scratch"}))
