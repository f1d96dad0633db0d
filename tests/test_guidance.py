"""Rao et al. 2023's guidance losses (kdfast.distill.guidance) against a direct re-derivation of their code's
formulas (per image, per box list, float64), the documented box edge cases, and a real guidance check."""
import pytest
import torch
import torch.nn.functional as F

from kdfast.distill import build_method
from kdfast.distill.guidance import box_masks, guidance_loss, guided_classes


# --- their formulas, one image at a time (losses.py / attribution_methods.py of sukrutrao/Model-Guidance)

def _their_mask(shape, boxes):
    mask = torch.zeros(shape, dtype=torch.long)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


def _their_energy(a, boxes):
    pos = a.clamp(min=0)
    mask = _their_mask(a.shape, boxes)
    num, den = pos[torch.where(mask == 1)].sum(), pos.sum()
    return 1 - num if den < 1e-7 else 1 - num / den


def _their_l1(a, boxes):
    return F.l1_loss(a, _their_mask(a.shape, boxes).to(a.dtype), reduction="mean")


def _their_rrr(a, boxes):
    return torch.square(a[torch.where(_their_mask(a.shape, boxes) == 0)]).sum()


def _their_ppce(a, boxes):
    inside = a[torch.where(_their_mask(a.shape, boxes) == 1)]
    return F.binary_cross_entropy(inside, torch.ones_like(inside), reduction="mean")


THEIRS = {"energy": (_their_energy, False, False), "l1": (_their_l1, True, True), "rrr": (_their_rrr, False, True),
          "ppce": (_their_ppce, True, True)}


def _their_postprocess(a, only_positive, binarize, size):
    a = a[None, None]
    if only_positive:
        a = a.clamp(min=0)
    if binarize:
        peak = a.abs().amax(dim=(1, 2, 3), keepdim=True)
        a = torch.where(peak == 0, a, a / peak)
    if size is not None:
        a = F.interpolate(a, size=size, mode="bilinear")  # captum's LayerAttribution.interpolate
    return a[0, 0]


def _clip(box, height, width):
    x0, y0, x1, y1 = box
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def _reference(name, maps, boxes, classes, size):
    fn, only_positive, binarize = THEIRS[name]
    total, count = torch.zeros((), dtype=maps.dtype), 0
    for b in range(len(maps)):
        a = _their_postprocess(maps[b], only_positive, binarize, size)
        height, width = a.shape
        listed = [_clip(row[1:].tolist(), height, width) for row in boxes[b] if int(row[0]) == int(classes[b])]
        listed = [bx for bx in listed if bx[0] < bx[2] and bx[1] < bx[3]]  # empty boxes cover nothing
        if not listed:
            continue  # not guided: their loop's `if train_bbs[img_idx] is None: continue`
        total = total + fn(a, listed)
        count += 1
    return total, count


def _case(seed, h=9, w=11, size=None):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(6, h, w, generator=g, dtype=torch.float64)
    maps[4] = maps[4].abs() * 0.01 + 0.5  # all positive
    maps[5] = -maps[5].abs()  # no positive energy at all
    H, W = size or (h, w)
    boxes = torch.full((6, 4, 5), -1, dtype=torch.int64)
    boxes[0, 0] = torch.tensor([1, 2, 1, 6, 5])
    boxes[0, 1] = torch.tensor([1, 5, 3, 9, 8])  # overlaps the first
    boxes[0, 2] = torch.tensor([0, 0, 0, W, H])  # another class: ignored
    boxes[1, 0] = torch.tensor([0, -3, -2, 4, 3])  # over the top-left border
    boxes[1, 1] = torch.tensor([0, W - 3, H - 2, W + 5, H + 7])  # over the bottom-right border
    boxes[2, 0] = torch.tensor([1, 4, 4, 4, 8])  # empty (x0 == x1): image 2 is not guided
    # image 3: no boxes at all (padding only)
    boxes[4, 0] = torch.tensor([1, 0, 0, W, H])  # the whole image
    boxes[5, 0] = torch.tensor([0, 2, 2, 5, 5])
    classes = torch.tensor([1, 0, 1, 0, 1, 0])
    return maps, boxes, classes


@pytest.mark.parametrize("name", ["energy", "l1", "rrr", "ppce"])
@pytest.mark.parametrize("size", [None, (18, 22)])
def test_guidance_losses_match_their_formulas(name, size):
    maps, boxes, classes = _case(1, size=size)
    maps.requires_grad_(True)
    ours, count = guidance_loss(name, maps, boxes, classes, image_size=size)
    theirs, their_count = _reference(name, maps, boxes, classes, size)
    assert count == their_count == 4
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours, maps)
    (g_theirs,) = torch.autograd.grad(theirs, maps)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)
    mean, _ = guidance_loss(name, maps, boxes, classes, image_size=size, reduction="mean")
    torch.testing.assert_close(mean, theirs / 4)


def test_box_edge_cases_are_documented_behaviour():
    maps, boxes, classes = _case(2)
    masks = box_masks(boxes, classes, (9, 11))
    assert masks[1, :3, :4].all() and masks[1, 7:, 8:].all() and masks[1].sum() == 12 + 6  # clipped, not wrapped
    assert masks[2].sum() == 0 and masks[3].sum() == 0  # empty box, no boxes
    assert masks[4].all()
    # energy: image 4 has all its energy in the box -> loss 0; image 5 has no positive energy -> 1 - 0 = 1.
    single, _ = guidance_loss("energy", maps[4:5], boxes[4:5], classes[4:5])
    assert float(single) == pytest.approx(0.0, abs=1e-12)
    none, _ = guidance_loss("energy", maps[5:6], boxes[5:6], classes[5:6])
    assert float(none) == 1.0
    # images without a box of their class contribute exactly nothing, whatever their maps
    loss, count = guidance_loss("ppce", maps[2:4] * 1e6, boxes[2:4], classes[2:4])
    assert count == 0 and float(loss) == 0.0
    with pytest.raises(ValueError, match="unknown guidance loss 'iou'"):
        guidance_loss("iou", maps, boxes, classes)
    with pytest.raises(ValueError, match=r"boxes must be a \(B, M, 5\)"):
        guidance_loss("energy", maps, boxes[..., :4], classes)


def test_guided_classes_draw_a_positive_class():
    torch.manual_seed(0)
    targets = torch.tensor([[0.0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    for _ in range(20):
        drawn = guided_classes(targets)
        assert int(drawn[0]) in (1, 3) and int(drawn[1]) == 0
    assert guided_classes(torch.tensor([2, 0])).tolist() == [2, 0]


def test_guided_method_adds_a_term_and_needs_boxes():
    from kdfast.distill.models import tiny_resnet

    torch.manual_seed(0)
    model = tiny_resnet(3, widths=(4, 4, 8, 8))
    batch = {"images": torch.rand(2, 3, 16, 16), "targets": torch.tensor([0, 2]),
             "boxes": torch.tensor([[[0, 2, 2, 9, 9]], [[-1, -1, -1, -1, -1]]]), "indices": torch.arange(2)}
    out = build_method("guided", loss="energy", weight=2.0)(model, None, batch)
    assert set(out.terms) == {"ce", "guidance"} and 0 < float(out.terms["guidance"].detach()) <= 2.0
    with pytest.raises(KeyError, match="needs 'boxes'"):
        build_method("guided")(model, None, {k: v for k, v in batch.items() if k != "boxes"})
    with pytest.raises(ValueError, match="unknown guidance loss"):
        build_method("guided", loss="dice")


def test_guided_teacher_looks_at_the_object(tmp_path):
    """On a Waterbirds-style set with a 100% background correlation, a few steps of CE + energy loss put far
    more of the GradCAM energy inside the bird's box than CE alone."""
    from kdfast.data.boxes import BoxedTransform
    from kdfast.data.waterbirds import WaterbirdsDataset, generate_waterbirds_style
    from kdfast.distill.guidance import explanation_maps
    from kdfast.distill.models import tiny_resnet
    from kdfast.explain.gradcam import resize_maps
    from kdfast.metrics.localization import energy_pointing_game

    root = generate_waterbirds_style(tmp_path / "wb", train_per_class=48, eval_per_group=8, correlation=1.0,
                                     size=32, seed=0)
    transform = BoxedTransform(32, normalize=False)

    def tensors(split):
        data = WaterbirdsDataset(root, split, transform)
        items = [data[i] for i in range(len(data))]
        return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in ("images", "targets", "boxes")}

    train, val = tensors("train"), tensors("val")

    def energy_in_box(method):
        torch.manual_seed(0)
        model = tiny_resnet(2, widths=(8, 8, 16, 16))
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(12):
            pick = torch.randperm(len(train["images"]), generator=order)[:32]
            loss = method(model, None, {k: v[pick] for k, v in train.items()}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            _, maps = explanation_maps("gradcam", model, val["images"], val["targets"])
        masks = box_masks(val["boxes"], val["targets"], (32, 32)).bool()
        return float(energy_pointing_game(resize_maps(maps, (32, 32)), masks).mean())

    unguided = energy_in_box(build_method("scratch"))
    guided = energy_in_box(build_method("guided", loss="energy", explanation="gradcam", weight=0.1))
    assert guided > unguided + 0.2, (guided, unguided)


def test_guiding_all_classes_sums_each_class_map_against_the_label_boxes():
    from kdfast.distill.guidance import explanation_maps
    from kdfast.distill.models import tiny_resnet

    torch.manual_seed(1)
    model = tiny_resnet(3, widths=(4, 4, 8, 8)).double()
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 2, 1])
    boxes = torch.tensor([[[0, 2, 2, 9, 9], [2, 0, 0, 16, 16]], [[2, 8, 1, 15, 6], [-1] * 5],
                          [[-1] * 5, [-1] * 5]])
    batch = {"images": images, "targets": targets, "boxes": boxes, "indices": torch.arange(3)}
    out = build_method("guided", loss="energy", weight=0.5, classes="all")(model, None, batch)
    expected = 0.0
    for k in range(3):
        _, maps = explanation_maps("gradcam", model, images, torch.full((3,), k))
        maps = F.interpolate(maps[:, None], size=(16, 16), mode="bilinear")[:, 0]
        for b in range(2):  # image 2 has no boxes
            listed = [row[1:].tolist() for row in boxes[b] if int(row[0]) == int(targets[b])]
            expected = expected + _their_energy(maps[b], listed)
    torch.testing.assert_close(out.terms["guidance"], 0.5 * expected)
