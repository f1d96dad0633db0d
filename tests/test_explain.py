"""kdfast.explain: GradCAM (autograd, closed form), resizing, frozen explanations and their aligned augmentation."""
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18
from torchvision.transforms import functional as TF

from kdfast.explain import (
    ExplanationStore,
    FrozenExplanationDataset,
    closed_form_cam,
    crop_resize,
    pool_linear_cam,
    precompute_explanations,
    resize_maps,
    sample_box,
)
from kdfast.explain.gradcam import gradcam
from kdfast.ops.iou_tally import upsample_reference


class TinyResNet(nn.Module):
    """The torchvision ResNet layout (layer1..layer4 -> avgpool -> fc) at a few channels: fast in float64."""

    def __init__(self, num_classes=6, width=4):
        super().__init__()

        def stage(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = stage(3, width, 2)
        self.layer1 = stage(width, width, 1)
        self.layer2 = nn.Sequential(stage(width, 2 * width, 2), stage(2 * width, 2 * width, 1))
        self.layer3 = stage(2 * width, 4 * width, 2)
        self.layer4 = stage(4 * width, 8 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_resnet(num_classes=6, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return TinyResNet(num_classes).to(dtype)


def gradcam_one_image(model, image, cls, layer):
    """GradCAM of a single image, written out: gradient of one logit w.r.t. the layer's activation."""
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = model(image[None])
    finally:
        handle.remove()
    a = store["a"][0]
    (g,) = torch.autograd.grad(logits[0, cls], store["a"])
    alpha = g[0].mean(dim=(1, 2))
    return torch.clamp((alpha[:, None, None] * a).sum(0), min=0)


def resnet18_with_trained_looking_head():
    torch.manual_seed(0)
    model = resnet18(num_classes=6).double()
    with torch.no_grad():  # random signs: some class evidence is positive somewhere, so the CAMs are not all 0
        model.fc.weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize(
    "make_model,train_mode,size,map_size",
    [(resnet18_with_trained_looking_head, False, 64, 2), (tiny_resnet, False, 80, 5), (tiny_resnet, True, 48, 3)],
)
def test_closed_form_equals_autograd_gradcam(gen, make_model, train_mode, size, map_size):
    model = make_model().train(train_mode)
    images = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
    classes = torch.tensor([0, 5])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logits, cams = gradcam(model, images, classes, layer="layer4")
    model.load_state_dict(state)  # train mode: undo the running-stat update of that forward
    logits2, closed = pool_linear_cam(model, images, classes, layer="layer4", head="fc")
    assert cams.shape == (2, map_size, map_size)
    assert (cams > 0).any()
    torch.testing.assert_close(closed, cams, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(logits2, logits, rtol=1e-12, atol=1e-12)


def test_closed_form_gradients_equal_double_backward(gen):
    """Training through the closed form gives exactly the double-backward gradients of autograd GradCAM."""
    images = torch.randn(2, 3, 48, 48, generator=gen, dtype=torch.float64)
    target = torch.rand(2, 3, 3, generator=gen, dtype=torch.float64)
    classes = torch.tensor([1, 4])
    grads = []
    for closed in (True, False):
        model = tiny_resnet().eval()
        if closed:
            _, cams = pool_linear_cam(model, images, classes)
        else:
            _, cams = gradcam(model, images, classes, create_graph=True)
        F.cosine_similarity(cams.flatten(1), target.flatten(1)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "fc.weight" in grads[0] and "layer4.0.weight" in grads[0]
    assert grads[0]["layer4.0.weight"].abs().max() > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-14, msg=name)


@pytest.mark.parametrize("layer", ["layer3", "layer2.1", "layer4"])
def test_gradcam_at_any_layer_matches_per_image_computation(gen, layer):
    model = tiny_resnet().eval()
    images = torch.randn(3, 3, 64, 64, generator=gen, dtype=torch.float64)
    logits, cams = gradcam(model, images, None, layer=layer)
    classes = logits.argmax(1)
    for i in range(3):
        torch.testing.assert_close(cams[i], gradcam_one_image(model, images[i], int(classes[i]), layer), rtol=1e-10, atol=1e-14)
    assert not cams.requires_grad


def test_closed_form_cam_formula(gen):
    features = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    classes = torch.tensor([6, 0])
    got = closed_form_cam(features, weight, classes)
    for b in range(2):
        want = sum(weight[classes[b], k] * features[b, k] for k in range(5)).clamp(min=0) / 12
        torch.testing.assert_close(got[b], want)
    with pytest.raises(ValueError, match="head weight must be"):
        closed_form_cam(features, weight[:, :4], classes)


def test_closed_form_refuses_other_heads(gen):
    model = tiny_resnet().eval()
    images = torch.randn(1, 3, 64, 64, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs a linear head"):
        pool_linear_cam(model, images, layer="layer4", head="avgpool")
    with pytest.raises(ValueError, match="has no submodule named 'layer9'"):
        gradcam(model, images, layer="layer9")
    model.avgpool = nn.AdaptiveMaxPool2d(1)  # still pool + linear, but not an average: the closed form is wrong
    with pytest.raises(ValueError, match=r"are not 'fc'\(global average pool of 'layer4'\)"):
        pool_linear_cam(model, images)


def test_gradcam_class_checks(gen):
    model = tiny_resnet().eval()
    images = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="must lie in"):
        gradcam(model, images, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="one class per sample"):
        pool_linear_cam(model, images, torch.tensor([0]))


def test_resize_maps(gen):
    maps = torch.rand(2, 5, 7, generator=gen, dtype=torch.float64)
    assert resize_maps(maps, (5, 7)) is maps
    up = resize_maps(maps, (12, 9))
    torch.testing.assert_close(up, upsample_reference(maps[None], (12, 9))[0], rtol=1e-12, atol=1e-12)
    channels = torch.rand(2, 6, 8, 8, generator=gen, dtype=torch.float64)
    down = resize_maps(channels, (4, 4))
    torch.testing.assert_close(down, TF.resize(channels, [4, 4], antialias=True), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="maps must be"):
        resize_maps(maps[0], (3, 3))
    with pytest.raises(ValueError, match="size must be"):
        resize_maps(maps, (0, 3))


# ---- frozen explanations -------------------------------------------------------------------------------


def teacher_explain(model, images):
    return pool_linear_cam(model, images.to(torch.float64), None)


def make_data(gen, n=7, size=32):
    images = torch.rand(n, 3, size, size, generator=gen, dtype=torch.float64)
    return TensorDataset(images, torch.arange(n) % 3)


def test_precompute_stores_the_teachers_outputs(gen, tmp_path):
    data = make_data(gen)
    teacher = tiny_resnet().train()
    with torch.no_grad():
        want_logits, want_cams = teacher_explain(teacher.eval(), data.tensors[0])
    teacher.train()
    store = precompute_explanations(teacher, data, tmp_path / "store", teacher_explain, batch_size=3)
    assert teacher.training  # mode restored
    assert len(store) == 7 and store.num_classes == 6 and store.explanation_shape == (2, 2)  # 32 px / 16
    for i in range(7):
        logits, cam = store[i]
        torch.testing.assert_close(logits, want_logits[i].float())
        torch.testing.assert_close(cam, want_cams[i].float())
    # done: a second call does not rerun the teacher
    precompute_explanations(teacher, data, tmp_path / "store", lambda m, x: pytest.fail("recomputed"), batch_size=3)


def test_precompute_resumes_after_interruption(gen, tmp_path):
    data = make_data(gen)
    teacher = tiny_resnet().eval()
    calls = []

    def flaky(model, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return teacher_explain(model, images)

    with pytest.raises(KeyboardInterrupt):
        precompute_explanations(teacher, data, tmp_path / "s", flaky, batch_size=3)
    assert list(ExplanationStore(tmp_path / "s").missing()) == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="incomplete: 4 of 7 rows missing"):
        FrozenExplanationDataset(data, tmp_path / "s")
    resumed = precompute_explanations(teacher, data, tmp_path / "s", flaky, batch_size=3)
    assert calls == [3, 3, 3, 1]
    whole = precompute_explanations(teacher, data, tmp_path / "whole", teacher_explain, batch_size=3)
    for i in range(7):
        for a, b in zip(resumed[i], whole[i]):
            assert torch.equal(a, b)


def test_store_rejects_another_dataset_and_bad_values(gen, tmp_path):
    data = make_data(gen)
    teacher = tiny_resnet().eval()
    precompute_explanations(teacher, data, tmp_path / "s", teacher_explain, batch_size=4)
    with pytest.raises(ValueError, match="meta.json was made for 7 samples"):
        precompute_explanations(teacher, make_data(gen, n=7), tmp_path / "s", teacher_explain)
    with pytest.raises(ValueError, match="differs from the image the store"):
        FrozenExplanationDataset(make_data(gen), tmp_path / "s")
    with pytest.raises(ValueError, match="beyond float16's range"):
        precompute_explanations(teacher, data, tmp_path / "h", lambda m, x: (m(x.double()), torch.full((len(x), 2), 1e6)), dtype="float16")
    with pytest.raises(FileNotFoundError, match="not a frozen-explanation store"):
        ExplanationStore(tmp_path / "nothing")
    with pytest.raises(TypeError, match=r"dataset\[0\] must give a float \(C, H, W\) image tensor"):
        precompute_explanations(teacher, TensorDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)), tmp_path / "u", teacher_explain)


def test_store_pickles_without_its_arrays(gen, tmp_path):
    data = make_data(gen, n=40)
    store = precompute_explanations(tiny_resnet().eval(), data, tmp_path / "s", teacher_explain, batch_size=40)
    store[0]
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 2000
    assert torch.equal(clone[39][1], store[39][1])


def linear_field(ys, xs):
    """A field linear in normalised image coordinates: bilinear resampling reproduces it exactly."""
    return 1.0 + 2.0 * xs[None, :] - 3.0 * ys[:, None]


def centres(n):
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


@pytest.mark.parametrize("flip", [False, True])
def test_crop_resize_samples_the_box(gen, flip):
    """Image (32x32) and explanation (8x8) of the same field, cropped with the same box to different sizes,
    both equal the field at the output's sample points (inside the box, away from the clamped border)."""
    image = linear_field(centres(32), centres(32))[None]
    expl = linear_field(centres(8), centres(8))[None]
    box = (0.2, 0.1, 0.8, 0.9)
    for source, size in ((image, (12, 10)), (expl, (5, 7))):
        got = crop_resize(source, box, size, flip)[0]
        ys = box[0] + centres(size[0]) * (box[2] - box[0])
        xs = box[1] + centres(size[1]) * (box[3] - box[1])
        want = linear_field(ys, xs.flip(0) if flip else xs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_full_box_flip_is_a_mirror(gen):
    x = torch.rand(2, 9, 11, generator=gen)
    torch.testing.assert_close(crop_resize(x, (0, 0, 1, 1), (9, 11), flip=True), x.flip(-1), rtol=0, atol=1e-5)
    assert crop_resize(x, (0, 0, 1, 1), (9, 11)) is x


def test_frozen_dataset_keeps_image_and_explanation_aligned(gen, tmp_path):
    """Stored explanations are the image's own field at 8x8: every augmented pair must agree where both
    are sampled inside the outermost pixel centres."""
    n, size = 6, 32
    field = linear_field(centres(size), centres(size))
    images = torch.stack([torch.stack([field, -field, field * 0]) for _ in range(n)]).float()
    data = TensorDataset(images, torch.zeros(n, dtype=torch.int64))
    small = linear_field(centres(8), centres(8)).float()

    def explain(model, x):
        return torch.zeros(len(x), 4), small.expand(len(x), 8, 8)

    store = precompute_explanations(nn.Identity(), data, tmp_path / "s", explain, batch_size=4)
    ds = FrozenExplanationDataset(data, store, size=16, explanation_size=16, scale=(0.2, 0.9), flip_p=0.5)
    flips = []
    for i in range(n):
        torch.manual_seed(100 + i)
        item = ds[i]
        torch.manual_seed(100 + i)  # replay the item's draws: its box, then its flip
        top, left, bottom, right = sample_box(size, size, ds.scale, ds.ratio)
        flips.append(bool(torch.rand(()) < ds.flip_p))
        ys = top + centres(16) * (bottom - top)
        xs = left + centres(16) * (right - left)
        xs = xs.flip(0) if flips[-1] else xs
        inside = ((ys > 1 / 16) & (ys < 15 / 16))[:, None] & ((xs > 1 / 16) & (xs < 15 / 16))[None, :]
        assert inside.sum() > 16
        want = linear_field(ys, xs).float()
        torch.testing.assert_close(item["images"][0][inside], want[inside], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(item["teacher_explanations"][inside], want[inside], rtol=1e-5, atol=1e-5)
    assert set(flips) == {False, True}


def test_frozen_dataset_batches_follow_the_method_contract(gen, tmp_path):
    data = make_data(gen, n=5)
    teacher = tiny_resnet().eval()
    store = precompute_explanations(teacher, data, tmp_path / "s", teacher_explain, batch_size=5)
    ds = FrozenExplanationDataset(data, store, size=(48, 40), explanation_size=(3, 3))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert set(batch) == {"images", "targets", "indices", "teacher_logits", "teacher_explanations"}
    assert batch["images"].shape == (4, 3, 48, 40)
    assert batch["teacher_explanations"].shape == (4, 3, 3)
    assert batch["teacher_logits"].shape == (4, 6)
    assert batch["indices"].tolist() == [0, 1, 2, 3]
    plain = FrozenExplanationDataset(data, store, augment=False)[2]
    assert torch.equal(plain["images"], data.tensors[0][2])
    assert torch.equal(plain["teacher_explanations"], store[2][1])
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["explanation_shape"] == [2, 2] and meta["num_classes"] == 6
    with pytest.raises(ValueError, match="flip_p"):
        FrozenExplanationDataset(data, store, flip_p=2)
    assert np.load(tmp_path / "s" / "done.npy").all()
