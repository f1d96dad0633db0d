import numpy as np
import pytest
import torch

from kdfast.metrics.localization import box_iou, boxes_to_mask, energy_pointing_game
from kdfast.metrics.shift import overlap_cosine, shift_equivariance, shifted_view


def test_epg_and_iou_hand_case():
    a = torch.tensor([[[1.0, -1.0], [3.0, 0.0]]])
    box = boxes_to_mask([[(0, 0, 1, 1)]], 2, 2)  # top-left pixel
    assert box.tolist() == [[[True, False], [False, False]]]
    assert energy_pointing_game(a, box).tolist() == pytest.approx([0.25])
    # a⁺ = [[1, 0], [3, 0]] → min-max [[1/3, 0], [1, 0]] → > 0.5 selects only (1, 0); IoU with (0, 0) = 0.
    assert box_iou(a, box).tolist() == [0.0]
    assert box_iou(a, box, threshold=0.3).tolist() == pytest.approx([0.5])


def test_epg_zero_energy_and_constant_iou():
    a = torch.full((1, 3, 3), -2.0)
    box = boxes_to_mask([[(0, 0, 2, 2)]], 3, 3)
    assert energy_pointing_game(a, box).tolist() == [0.0]
    assert box_iou(torch.ones(1, 3, 3), box).tolist() == [0.0]


@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (4, 5, 7), (16, 8, 8)])
def test_epg_iou_match_direct(gen, n, h, w):
    a = torch.randn(n, h, w, generator=gen, dtype=torch.float64)
    boxes = []
    for _ in range(n):
        x0, y0 = int(torch.randint(0, w, (1,), generator=gen)), int(torch.randint(0, h, (1,), generator=gen))
        boxes.append([(x0, y0, w, h)])
    masks = boxes_to_mask(boxes, h, w)
    epg, iou = energy_pointing_game(a, masks), box_iou(a, masks)
    for i in range(n):
        pos = np.maximum(a[i].numpy(), 0)
        inside = pos[boxes[i][0][1]:, boxes[i][0][0]:].sum()
        assert epg[i] == pytest.approx(inside / pos.sum() if pos.sum() >= 1e-7 else 0.0)
        span = pos.max() - pos.min()
        norm = (pos - pos.min()) / span if span > 0 else np.zeros_like(pos)
        sel, m = norm > 0.5, masks[i].numpy()
        assert iou[i] == pytest.approx((sel & m).sum() / (sel | m).sum())


def test_localization_bad_inputs():
    masks = boxes_to_mask([[(0, 0, 1, 1)], []], 2, 2)
    with pytest.raises(ValueError, match="box mask of image 1 is empty"):
        energy_pointing_game(torch.ones(2, 2, 2), masks)
    with pytest.raises(ValueError, match="shape"):
        box_iou(torch.ones(2, 3, 3), masks)
    with pytest.raises(ValueError, match="NaN"):
        energy_pointing_game(torch.full((1, 2, 2), float("nan")), masks[:1])
    with pytest.raises(ValueError, match="outside"):
        boxes_to_mask([[(0, 0, 3, 1)]], 2, 2)
    with pytest.raises(ValueError, match="empty or outside"):
        boxes_to_mask([[(1, 0, 1, 2)]], 2, 2)


def test_shift_curve_of_an_equivariant_explainer_is_one(gen):
    images = torch.rand(3, 3, 12, 12, generator=gen)
    curve = shift_equivariance(lambda x, y: x.sum(dim=1), images, torch.tensor([0, 1, 2]), max_shift=4)
    assert curve["shifts"] == [0, 1, 2, 3, 4]
    assert curve["cosine"] == pytest.approx([1.0] * 5)


def test_shift_curve_matches_direct(gen):
    images = torch.rand(2, 1, 9, 9, generator=gen)
    weights = torch.rand(7, 7, generator=gen)  # position-dependent: not equivariant

    def explain(x, y):
        return x[:, 0] * weights

    curve = shift_equivariance(explain, images, torch.tensor([0, 0]), max_shift=2)
    for s in range(3):
        for i in range(2):
            ref = (images[i, 0, 0:7, 0:7] * weights).numpy()
            moved = (images[i, 0, s:s + 7, s:s + 7] * weights).numpy()
            a, b = ref[s:, s:].ravel(), moved[:7 - s, :7 - s].ravel()
            assert curve["per_image"][s, i] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert shifted_view(images, 1, 2).shape == (2, 1, 7, 7)


def test_shift_bad_inputs():
    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="max_shift"):
        shift_equivariance(lambda x, y: x.sum(1), images, torch.tensor([0]), max_shift=8)
    with pytest.raises(ValueError, match="expected"):
        shift_equivariance(lambda x, y: x.sum(1)[:, :2], images, torch.tensor([0]), max_shift=2)
    with pytest.raises(ValueError, match="no overlap"):
        overlap_cosine(torch.ones(1, 2, 2), torch.ones(1, 2, 2), 2)
