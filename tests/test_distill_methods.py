"""The DistillationMethods of kdfast.distill on tiny ResNet-like models: they run, their terms are the losses of
kdfast.distill.losses on the right tensors, gradients reach the student and the method but not the teacher,
the prepare stages train and freeze their modules, CRD's memory and sampling, and the registry's errors."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import kdfast.distill as distill
from kdfast.distill import losses
from kdfast.distill.features import capture_outputs
from kdfast.distill.methods import ContrastMemory, rotated_batch

CLASSES, SIZE = 5, 16


class TinyResNet(nn.Module):
    """torchvision ResNet's module names (conv1, layer1..layer4, avgpool, fc) at a few channels."""

    def __init__(self, widths=(4, 8, 8, 16), classes=CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1)
        stages, previous = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(nn.Conv2d(previous, width, 3, stride, 1), nn.BatchNorm2d(width), nn.ReLU()))
            previous = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, classes)

    def features(self, x):
        """{layer name: output}, computed directly (no hooks), for re-deriving the methods' terms."""
        out = {}
        x = self.conv1(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        out["avgpool"] = self.avgpool(x)
        out["logits"] = self.fc(torch.flatten(out["avgpool"], 1))
        return out

    def forward(self, x):
        return self.features(x)["logits"]


class DictDataset(Dataset):
    """The trainer's batch format: dicts with images, targets and dataset indices; labels in `targets`."""

    def __init__(self, n=12, seed=0, size=SIZE):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.targets = [i % CLASSES for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return {"images": self.images[i], "targets": self.targets[i], "indices": i}


def models(seed=0):
    torch.manual_seed(seed)
    student, teacher = TinyResNet(), TinyResNet(widths=(4, 8, 12, 24))
    teacher.eval()
    return student, teacher


def first_batch(dataset, n=4):
    return next(iter(DataLoader(dataset, batch_size=n)))


DIMS = {"ft": dict(student_channels=16, teacher_channels=24), "crd": dict(student_dim=16, teacher_dim=24),
        "sskd": dict(student_dim=16, teacher_dim=24, teacher_ss_epochs=1)}
CASES = [
    ("scratch", {}, {"ce"}),
    ("ls", {}, {"ls"}),
    ("kd", {}, {"ce", "kd"}),
    ("multilabel_kd", {}, {"kd"}),
    ("at", {}, {"ce", "at"}),
    ("at", {"logit_kd": True}, {"ce", "kd", "at"}),
    ("ft", DIMS["ft"], {"ce", "ft"}),
    ("ft", dict(DIMS["ft"], logit_kd=True), {"ce", "kd", "ft"}),
    ("crd", dict(DIMS["crd"], num_samples=12, num_negatives=6), {"ce", "crd"}),
    ("crd", dict(DIMS["crd"], num_samples=12, num_negatives=6, negatives="uniform", logit_kd=True),
     {"ce", "kd", "crd"}),
    ("sskd", DIMS["sskd"], {"ce", "kd", "ss", "tf"}),
]
# Modules of a method that are trained in `prepare` and frozen for the main stage.
FROZEN = {"ft": "paraphraser", "sskd": "teacher_head"}


@pytest.mark.parametrize("name,options,term_names", CASES, ids=lambda c: str(c) if isinstance(c, str) else None)
def test_method_step_runs_and_grads_reach_student_and_method_only(name, options, term_names):
    student, teacher = models()
    dataset = DictDataset()
    method = distill.build_method(name, **options)
    method.prepare(student, teacher, DataLoader(dataset, batch_size=4), "cpu")
    method.train()
    batch = first_batch(dataset)
    if name == "multilabel_kd":
        batch["targets"] = (torch.rand(4, CLASSES) > 0.5).float()
    out = method(student, teacher, batch)

    assert set(out.terms) == term_names
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.terms.values())
    assert out.student_logits.shape == (4, CLASSES)
    if method.needs_teacher:
        assert out.teacher_logits.shape == (4, CLASSES)
    else:
        assert out.teacher_logits is None
    out.loss.backward()

    assert all(p.grad is None for p in teacher.parameters())
    for pname, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in student.parameters())
    frozen = FROZEN.get(name)
    for pname, p in method.named_parameters():
        if frozen and pname.startswith(frozen + "."):
            assert p.grad is None and not p.requires_grad, pname
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_kd_terms_are_the_kd_loss_and_precomputed_teacher_logits_need_no_teacher():
    student, teacher = models()
    batch = first_batch(DictDataset())
    method = distill.build_method("kd", alpha=0.3, temperature=2.0)
    out = method(student, teacher, batch)
    t_logits = teacher(batch["images"])
    s_logits = student(batch["images"])
    assert torch.allclose(out.terms["ce"], 0.7 * F.cross_entropy(s_logits, batch["targets"]))
    assert torch.allclose(out.terms["kd"], 0.3 * losses.soft_target_kl(s_logits, t_logits, 2.0))
    assert torch.allclose(out.loss, losses.kd_loss(s_logits, t_logits, batch["targets"], 0.3, 2.0))

    precomputed = dict(batch, teacher_logits=torch.randn(4, CLASSES))
    out = method(student, None, precomputed)
    assert torch.equal(out.teacher_logits, precomputed["teacher_logits"])
    assert torch.allclose(out.loss, losses.kd_loss(s_logits, precomputed["teacher_logits"], batch["targets"], 0.3, 2.0))
    with pytest.raises(ValueError, match="needs a teacher"):
        method(student, None, batch)


def test_multilabel_kd_term_is_the_loss():
    student, teacher = models()
    batch = first_batch(DictDataset())
    out = distill.build_method("multilabel_kd", temperature=5.0)(student, teacher, batch)
    expected = losses.multilabel_kd_loss(student(batch["images"]), teacher(batch["images"]), 5.0)
    assert torch.allclose(out.terms["kd"], expected)


def test_at_term_is_factor_times_sum_over_pairs_on_the_named_layers():
    student, teacher = models()
    student.eval()
    batch = first_batch(DictDataset())
    method = distill.build_method("at", pairs=["layer3", ["layer4", "layer4"], ["layer2", "layer2"]], factor=10.0)
    out = method(student, teacher, batch)
    fs, ft = student.features(batch["images"]), teacher.features(batch["images"])
    expected = 10.0 * sum(losses.attention_transfer_loss(fs[n], ft[n]) for n in ("layer3", "layer4", "layer2"))
    assert torch.allclose(out.terms["at"], expected)
    assert torch.allclose(out.terms["ce"], F.cross_entropy(fs["logits"], batch["targets"]))


def test_feature_method_with_logit_kd_uses_kd_in_place_of_ce():
    student, teacher = models()
    student.eval()
    batch = first_batch(DictDataset())
    out = distill.build_method("at", logit_kd=True, kd_alpha=0.25, kd_temperature=3.0)(student, teacher, batch)
    s_logits, t_logits = student(batch["images"]), teacher(batch["images"])
    expected = losses.kd_loss(s_logits, t_logits, batch["targets"], 0.25, 3.0)
    assert torch.allclose(out.terms["ce"] + out.terms["kd"], expected)


# -------------------------------------------------------------------------------------------------------- FT
def test_ft_prepare_trains_the_paraphraser_then_freezes_it_and_the_term_uses_its_encoder(tmp_path):
    student, teacher = models()
    dataset = DictDataset()
    loader = DataLoader(dataset, batch_size=4)
    method = distill.build_method("ft", paraphraser_lr=1e-3, paraphraser_epochs=3, factor=7.0, **DIMS["ft"])
    with pytest.raises(RuntimeError, match="prepare"):
        method(student, teacher, first_batch(dataset))

    features = teacher.features(dataset.images)["layer4"].detach()

    def reconstruction():
        with torch.no_grad():
            return F.mse_loss(method.paraphraser(features), features, reduction="sum").item()

    before = reconstruction()
    method.prepare(student, teacher, loader, "cpu")
    assert reconstruction() < before
    assert bool(method.paraphraser_trained) and not any(p.requires_grad for p in method.paraphraser.parameters())
    assert not teacher.training  # the teacher's mode is restored

    student.eval()
    batch = first_batch(dataset)
    out = method(student, teacher, batch)
    fs, ft = student.features(batch["images"]), teacher.features(batch["images"])
    teacher_factor = method.paraphraser.encoder(ft["layer4"])
    expected = 7.0 * losses.factor_transfer_loss(method.translator(fs["layer4"]), teacher_factor, 1)
    assert torch.allclose(out.terms["ft"], expected)

    # A resumed run restores the trained paraphraser and does not train it again.
    torch.save(method.state_dict(), tmp_path / "method.pt")
    restored = distill.build_method("ft", factor=7.0, **DIMS["ft"])
    restored.load_state_dict(torch.load(tmp_path / "method.pt"))

    class Untouchable:
        dataset = loader.dataset

        def __iter__(self):
            raise AssertionError("prepare must not train a restored paraphraser")

    restored.prepare(student, teacher, Untouchable(), "cpu")
    assert torch.allclose(restored(student, teacher, batch).terms["ft"], out.terms["ft"])


# ------------------------------------------------------------------------------------------------------- CRD
def test_contrast_memory_scores_and_momentum_update():
    torch.manual_seed(0)
    n, dim, k, temperature, momentum = 10, 4, 3, 0.5, 0.3
    memory = ContrastMemory(n, dim, temperature, momentum).double()
    student_bank, teacher_bank = memory.student_bank.clone(), memory.teacher_bank.clone()
    es = F.normalize(torch.randn(2, dim, dtype=torch.float64), dim=1)
    et = F.normalize(torch.randn(2, dim, dtype=torch.float64), dim=1)
    idx = torch.tensor([[1, 4, 7, 9], [3, 0, 0, 8]])
    s_scores, t_scores = memory.scores(es, et, idx)
    raw_s = np.exp(np.einsum("bkd,bd->bk", teacher_bank[idx].numpy(), es.numpy()) / temperature)
    raw_t = np.exp(np.einsum("bkd,bd->bk", student_bank[idx].numpy(), et.numpy()) / temperature)
    z_s, z_t = raw_s.mean() * n, raw_t.mean() * n  # fixed from the first batch
    np.testing.assert_allclose(s_scores.numpy(), raw_s / z_s, rtol=1e-12)
    np.testing.assert_allclose(t_scores.numpy(), raw_t / z_t, rtol=1e-12)
    assert s_scores.shape == (2, k + 1)

    rows = torch.tensor([1, 3])
    memory.update(rows, es, et)
    for bank, old, embed in ((memory.student_bank, student_bank, es), (memory.teacher_bank, teacher_bank, et)):
        mixed = momentum * old[rows].numpy() + (1 - momentum) * embed.numpy()
        np.testing.assert_allclose(bank[rows].numpy(), mixed / np.linalg.norm(mixed, axis=1, keepdims=True), rtol=1e-12)
        untouched = [i for i in range(n) if i not in (1, 3)]
        assert torch.equal(bank[untouched], old[untouched])

    # Z stays what the first batch set.
    s_again, _ = memory.scores(es, et, idx)
    raw_again = np.exp(np.einsum("bkd,bd->bk", memory.teacher_bank[idx].numpy(), es.numpy()) / temperature)
    np.testing.assert_allclose(s_again.numpy(), raw_again / z_s, rtol=1e-12)


def test_crd_term_is_nce_on_both_views_and_updates_the_banks():
    student, teacher = models()
    student.eval()
    dataset = DictDataset()
    method = distill.build_method("crd", num_samples=12, num_negatives=5, factor=0.5, momentum=0.25, **DIMS["crd"])
    method.prepare(student, teacher, DataLoader(dataset, batch_size=4), "cpu")
    batch = first_batch(dataset)
    memory = method.memory
    student_bank, teacher_bank = memory.student_bank.clone(), memory.teacher_bank.clone()
    torch.manual_seed(3)
    out = method(student, teacher, batch)

    torch.manual_seed(3)
    contrast = torch.cat([batch["indices"][:, None], method.sample_negatives(batch["indices"])], dim=1)
    fs, ft = student.features(batch["images"]), teacher.features(batch["images"])
    es = F.normalize(method.student_embed(fs["avgpool"].flatten(1)), dim=1)
    et = F.normalize(method.teacher_embed(ft["avgpool"].flatten(1)), dim=1)
    raw_s = torch.exp((teacher_bank[contrast] @ es[:, :, None])[..., 0] / 0.07)
    raw_t = torch.exp((student_bank[contrast] @ et[:, :, None])[..., 0] / 0.07)
    expected = 0.5 * (losses.nce_contrast_loss(raw_s / (raw_s.mean() * 12), 12)
                      + losses.nce_contrast_loss(raw_t / (raw_t.mean() * 12), 12))
    assert torch.allclose(out.terms["crd"], expected, rtol=1e-5)
    mixed = F.normalize(0.25 * student_bank[batch["indices"]] + 0.75 * es.detach(), dim=1)
    assert torch.allclose(memory.student_bank[batch["indices"]], mixed, atol=1e-6)


def test_crd_negatives_other_class_and_uniform():
    dataset = DictDataset(n=12)
    labels = torch.tensor(dataset.targets)
    anchors = torch.arange(12)
    for negatives in ("other_class", "uniform"):
        method = distill.build_method("crd", num_samples=12, num_negatives=3000, negatives=negatives)
        method.prepare(None, None, DataLoader(dataset, batch_size=4), "cpu")
        drawn = method.sample_negatives(anchors)
        assert drawn.shape == (12, 3000) and drawn.dtype == torch.int64
        for anchor in range(12):
            if negatives == "other_class":
                allowed = {i for i in range(12) if labels[i] != labels[anchor]}
            else:
                allowed = set(range(12)) - {anchor}
            assert set(drawn[anchor].tolist()) == allowed  # every allowed sample drawn, nothing else


def test_crd_checks_dataset_indices_and_prepare():
    student, teacher = models()
    dataset = DictDataset(n=12)
    method = distill.build_method("crd", num_samples=12, num_negatives=4, **DIMS["crd"])
    with pytest.raises(RuntimeError, match="prepare"):
        method(student, teacher, first_batch(dataset))
    with pytest.raises(ValueError, match="'num_samples' is 12 but the training set has 8"):
        method.prepare(student, teacher, DataLoader(Subset(dataset, range(8)), batch_size=4), "cpu")

    class NoLabels(Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return dataset[i]

    with pytest.raises(ValueError, match="NoLabels does not have.*negatives='uniform'"):
        method.prepare(student, teacher, DataLoader(NoLabels(), batch_size=4), "cpu")
    one_class = DictDataset(n=12)
    one_class.targets = [2] * 12
    with pytest.raises(ValueError, match="at least two classes"):
        method.prepare(student, teacher, DataLoader(one_class, batch_size=4), "cpu")

    method.prepare(student, teacher, DataLoader(dataset, batch_size=4), "cpu")
    bad = dict(first_batch(dataset), indices=torch.tensor([0, 1, 2, 12]))
    with pytest.raises(ValueError, match=r"indices'\] must lie in \[0, num_samples=12\)"):
        method(student, teacher, bad)


def test_crd_labels_through_a_subset():
    dataset = DictDataset(n=20)
    subset = Subset(dataset, list(range(3, 15)))
    method = distill.build_method("crd", num_samples=12, num_negatives=500)
    method.prepare(None, None, DataLoader(subset, batch_size=4), "cpu")
    assert method.sample_labels.tolist() == [dataset.targets[i] for i in range(3, 15)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _crd_rank(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    student, teacher = models(seed=0)  # same weights and memory init on both ranks
    dataset = DictDataset(n=12)
    method = distill.build_method("crd", num_samples=12, num_negatives=4, **DIMS["crd"])
    method.prepare(student, teacher, DataLoader(dataset, batch_size=4), "cpu")
    torch.manual_seed(10 + rank)
    rows = torch.arange(4) + 4 * rank
    batch = {"images": dataset.images[rows], "targets": torch.tensor(dataset.targets)[rows], "indices": rows}
    method(student, teacher, batch)
    torch.save({"memory": method.memory.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_crd_memory_update_is_identical_across_ddp_ranks(tmp_path):
    mp.spawn(_crd_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt")["memory"] for r in (0, 1))
    torch.manual_seed(0)
    TinyResNet(), TinyResNet(widths=(4, 8, 12, 24))
    initial = distill.build_method("crd", num_samples=12, num_negatives=4, **DIMS["crd"]).memory
    for key in ("student_bank", "teacher_bank", "normalizers"):
        assert torch.equal(rank0[key], rank1[key]), key
    changed = (rank0["student_bank"] != initial.student_bank).any(dim=1)
    assert changed.tolist() == [True] * 8 + [False] * 4  # both ranks' rows updated everywhere


# ------------------------------------------------------------------------------------------------------ SSKD
def test_rotated_batch_orders_each_image_then_its_rotations():
    images = torch.randn(2, 3, 5, 5)
    rotated = rotated_batch(images)
    assert rotated.shape == (8, 3, 5, 5)
    for b in range(2):
        for k in range(4):
            assert torch.equal(rotated[4 * b + k], torch.rot90(images[b], k, dims=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        rotated_batch(torch.randn(2, 3, 4, 5))


def kl_rows_np(student, teacher, rows, temperature):
    if not rows:
        return 0.0
    s, t = student[rows] / temperature, teacher[rows] / temperature
    ls = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    lt = t - np.log(np.exp(t - t.max(1, keepdims=True)).sum(1, keepdims=True)) - t.max(1, keepdims=True)
    return temperature**2 * np.mean(np.sum(np.exp(lt) * (lt - ls), axis=1))


def kept_rows_np(scores, targets, ratio):
    rank = [int((row > row[t]).sum()) for row, t in zip(scores, targets)]
    wrong = sorted((r, i) for i, r in enumerate(rank) if r > 0)
    return sorted([i for i, r in enumerate(rank) if r == 0] + [i for _, i in wrong[: int(len(wrong) * ratio)]])


def test_sskd_terms_match_a_direct_derivation():
    student, teacher = models()
    dataset = DictDataset()
    method = distill.build_method("sskd", ss_ratio=0.5, tf_ratio=0.5, **DIMS["sskd"]).double()
    student.double().eval()
    teacher.double()
    loader = DataLoader(dataset, batch_size=4)
    method.prepare(student, teacher, [{"images": b["images"].double()} for b in loader], "cpu")
    batch = first_batch(dataset)
    batch["images"] = batch["images"].double()
    out = method(student, teacher, batch)

    images, y = batch["images"], batch["targets"].numpy()
    assert torch.allclose(out.student_logits, student(images))
    assert torch.allclose(out.teacher_logits, teacher(images))
    with torch.no_grad():
        rot = [torch.rot90(images, k, dims=(2, 3)) for k in range(4)]
        fs = [student.features(r) for r in rot]
        ft = [teacher.features(r) for r in rot]
        s_logits = np.stack([f["logits"].numpy() for f in fs], axis=1)  # (B, 4, C)
        t_logits = np.stack([f["logits"].numpy() for f in ft], axis=1)
        es = np.stack([method.student_head(f["avgpool"].flatten(1)).numpy() for f in fs], axis=1)
        et = np.stack([method.teacher_head(f["avgpool"].flatten(1)).numpy() for f in ft], axis=1)
    batch_size = len(y)
    s_rot, t_rot = s_logits[:, 1:].reshape(-1, CLASSES), t_logits[:, 1:].reshape(-1, CLASSES)
    tf = kl_rows_np(s_rot, t_rot, kept_rows_np(t_rot, np.repeat(y, 3), 0.5), 4.0)

    def cos_matrix(e):
        return np.array([[e[b, 1 + r] @ e[c, 0] / np.linalg.norm(e[b, 1 + r]) / np.linalg.norm(e[c, 0])
                          for c in range(batch_size)] for b in range(batch_size) for r in range(3)])

    s_sim, t_sim = cos_matrix(es), cos_matrix(et)
    ss = kl_rows_np(s_sim, t_sim, kept_rows_np(t_sim, np.repeat(np.arange(batch_size), 3), 0.5), 0.5)
    ce = -np.mean([s_logits[b, 0, y[b]] - np.log(np.exp(s_logits[b, 0]).sum()) for b in range(batch_size)])
    kd = kl_rows_np(s_logits[:, 0], t_logits[:, 0], list(range(batch_size)), 4.0)
    for name, value, weight in (("ce", ce, 1.0), ("kd", kd, 0.9), ("ss", ss, 10.0), ("tf", tf, 2.7)):
        assert out.terms[name].item() == pytest.approx(weight * value, rel=1e-9, abs=1e-12), name


def test_sskd_term_on_no_kept_rows_is_zero_but_keeps_the_graph():
    student = torch.randn(6, 4, requires_grad=True)
    term = distill.SSKD.kl_on_rows(student, torch.randn(6, 4), torch.empty(0, dtype=torch.long), 0.5)
    assert term.item() == 0.0
    term.backward()
    assert torch.equal(student.grad, torch.zeros(6, 4))  # reached (DDP needs every parameter used), zero


def test_sskd_prepare_trains_the_teacher_head_and_keeps_it_frozen():
    student, teacher = models()
    method = distill.build_method("sskd", **DIMS["sskd"])
    batch = first_batch(DictDataset())
    with pytest.raises(RuntimeError, match="prepare"):
        method(student, teacher, batch)
    before = [p.clone() for p in method.teacher_head.parameters()]
    method.prepare(student, teacher, DataLoader(DictDataset(), batch_size=4), "cpu")
    assert bool(method.teacher_head_trained)
    assert all(not torch.equal(a, b) for a, b in zip(before, method.teacher_head.parameters()))
    assert not any(p.requires_grad for p in method.teacher_head.parameters())


# ------------------------------------------------------------------------------------- real torchvision ResNets
@pytest.mark.parametrize("name,options", [("at", {}), ("ft", {}), ("crd", {"num_samples": 2, "num_negatives": 8}),
                                          ("sskd", {"teacher_ss_epochs": 1})])
def test_defaults_fit_torchvision_resnet18_from_resnet34(name, options):
    import torchvision  # here, not at the top: the DDP test's worker processes import this module

    torch.manual_seed(0)
    student = torchvision.models.resnet18(num_classes=3)
    teacher = torchvision.models.resnet34(num_classes=3).eval()

    class Two(Dataset):
        targets = [0, 1]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"images": torch.randn(3, 32, 32), "targets": self.targets[i], "indices": i}

    loader = DataLoader(Two(), batch_size=2)
    method = distill.build_method(name, **options)
    method.prepare(student, teacher, loader, "cpu")
    out = method(student, teacher, next(iter(loader)))
    out.loss.backward()
    assert all(torch.isfinite(v) for v in out.terms.values())
    assert student.fc.weight.grad is not None and teacher.fc.weight.grad is None


# ------------------------------------------------------------------------------------------ hooks and errors
def test_capture_outputs_removes_hooks_and_sees_through_ddp_wrappers():
    student, _ = models()
    with capture_outputs(student, ["layer4", "layer4", "avgpool"]) as out:
        student(torch.randn(2, 3, SIZE, SIZE))
    assert set(out) == {"layer4", "avgpool"} and out["layer4"].shape == (2, 16, 2, 2)
    assert not student.layer4._forward_hooks and not student.avgpool._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with capture_outputs(student, ["layer4"]):
            raise RuntimeError("boom")
    assert not student.layer4._forward_hooks
    with capture_outputs(nn.DataParallel(student), ["layer3"]) as out:
        student(torch.randn(1, 3, SIZE, SIZE))
    assert out["layer3"].shape == (1, 8, 4, 4)


def test_wrong_layers_and_sizes_raise_naming_the_option_or_module():
    student, teacher = models()
    dataset = DictDataset()
    batch = first_batch(dataset)
    with pytest.raises(ValueError, match="no submodule named 'layer9'.*layer4"):
        distill.build_method("at", pairs=["layer9"])(student, teacher, batch)
    with pytest.raises(ValueError, match="option 'teacher_channels' is 512"):
        distill.build_method("ft").prepare(student, teacher, DataLoader(dataset, batch_size=4), "cpu")
    crd = distill.build_method("crd", num_samples=12, num_negatives=4, negatives="uniform", student_dim=8,
                               teacher_dim=24)
    with pytest.raises(ValueError, match="option 'student_dim' is 8 .* set student_dim to 16"):
        crd(student, teacher, batch)
    sskd = distill.build_method("sskd", student_dim=16, teacher_dim=7, teacher_ss_epochs=1)
    with pytest.raises(ValueError, match="option 'teacher_dim' is 7"):
        sskd.prepare(student, teacher, DataLoader(dataset, batch_size=4), "cpu")
    with pytest.raises(KeyError, match="no 'targets' entry"):
        distill.build_method("scratch")(student, teacher, {"images": batch["images"]})


@pytest.mark.parametrize("name", [n for n in distill.METHOD_NAMES if not n.startswith("e2kd")])
def test_registry_rejects_unknown_option_names(name):
    with pytest.raises(ValueError, match="unknown option 'bogus_option'"):
        distill.build_method(name, bogus_option=1)


@pytest.mark.parametrize("name", ["e2kd_gradcam", "e2kd_bcos"])
def test_registry_builds_e2kd_lazily(name):
    pytest.importorskip("kdfast.distill.e2kd")
    assert isinstance(distill.build_method(name), distill.DistillationMethod)
    with pytest.raises(ValueError, match="bogus_option"):
        distill.build_method(name, bogus_option=1)


def test_registry_errors_and_option_values():
    with pytest.raises(ValueError, match="unknown distillation method 'kd2'.*scratch"):
        distill.build_method("kd2")
    with pytest.raises(ValueError, match="needs option.*'num_samples'"):
        distill.build_method("crd")
    with pytest.raises(ValueError, match="option 'temperature' must be a number > 0"):
        distill.build_method("kd", temperature=0)
    with pytest.raises(ValueError, match="option 'alpha' must be a number in \\[0, 1\\]"):
        distill.build_method("ls", alpha=True)
    with pytest.raises(ValueError, match="option 'negatives'"):
        distill.build_method("crd", num_samples=10, negatives="hard")
    with pytest.raises(ValueError, match="option 'pairs'"):
        distill.build_method("at", pairs=[["layer3"]])
    defaults = distill.build_method("sskd")
    assert defaults.weights == {"ce": 1.0, "kd": 0.9, "ss": 10.0, "tf": 2.7}
    assert (defaults.kd_temperature, defaults.ss_temperature, defaults.tf_temperature) == (4.0, 0.5, 4.0)
    assert (defaults.ss_ratio, defaults.tf_ratio) == (0.75, 1.0)
    crd = distill.build_method("crd", num_samples=10)
    assert (crd.num_negatives, crd.factor, crd.memory.temperature, crd.memory.momentum) == (16384, 0.8, 0.07, 0.5)
    assert crd.memory.student_bank.shape == (10, 128)
    at = distill.build_method("at")
    assert at.pairs == (("layer3", "layer3"), ("layer4", "layer4")) and at.factor == 1000.0
    ft = distill.build_method("ft")
    assert (ft.factor, ft.p, ft.paraphraser_epochs) == (1000.0, 1, 1)
    assert ft.paraphraser.encoder[-2].out_channels == 256 and ft.translator[-2].out_channels == 256
    kd = distill.build_method("kd")
    assert (kd.alpha, kd.temperature) == (0.5, 4.0) and distill.build_method("ls").alpha == 0.1
