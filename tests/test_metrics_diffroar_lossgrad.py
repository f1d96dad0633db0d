import numpy as np
import pytest
import torch
from torch import nn

from kdfast.metrics.attribution import explanation_maps, loss_gradients, saliency
from kdfast.metrics.diffroar import channel_mean, diffroar, keep_mask, remove_and_fill
from kdfast.metrics.lossgrad import gradient_display


def test_keep_mask_hand_case_with_ties():
    a = torch.tensor([[3.0, -1.0, 2.0, 0.0]])
    assert keep_mask(a, 0.5, "top").tolist() == [[True, False, True, False]]
    assert keep_mask(a, 0.5, "bottom").tolist() == [[False, True, False, True]]
    ties = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert keep_mask(ties, 0.5, "top").tolist() == [[True, True, False, False]]  # lower index first
    assert keep_mask(a, 0.0, "top").sum() == 0 and keep_mask(a, 1.0, "bottom").all()


@pytest.mark.parametrize("shape,fraction", [((1, 1, 1, 1), 0.5), ((3, 2, 4, 5), 0.3), ((5, 3, 6, 6), 0.9)])
def test_keep_mask_matches_direct(gen, shape, fraction):
    a = torch.randn(*shape, generator=gen)
    for keep in ("top", "bottom"):
        got = keep_mask(a, fraction, keep).flatten(1).numpy()
        for i in range(shape[0]):
            flat = np.abs(a[i].flatten().numpy())
            order = np.argsort(-flat if keep == "top" else flat, kind="stable")
            expected = np.zeros_like(flat, dtype=bool)
            expected[order[:round(fraction * flat.size)]] = True
            assert (got[i] == expected).all()


def test_remove_and_fill_uses_the_channel_mean(gen):
    images = torch.rand(4, 3, 5, 5, generator=gen)
    attr = torch.randn(4, 3, 5, 5, generator=gen)
    fill = channel_mean(images)
    assert torch.allclose(fill.flatten(), images.double().mean(dim=(0, 2, 3)).float())
    out = remove_and_fill(images, attr, 0.4, "top", fill)
    kept = keep_mask(attr, 0.4, "top")
    assert torch.equal(out[kept], images[kept])
    assert torch.equal(out[~kept], fill.expand_as(images)[~kept])
    with pytest.raises(ValueError, match="keep"):
        keep_mask(attr, 0.4, "middle")
    with pytest.raises(ValueError, match="NaN"):
        keep_mask(torch.full((1, 2), float("nan")), 0.5, "top")


def test_diffroar_rewards_the_informative_attribution():
    torch.manual_seed(0)
    n = 256
    images = torch.randn(n, 1, 4, 4)
    labels = (images[:, 0, 0, 0] > 0).long()
    attr = torch.rand(n, 1, 4, 4) * 0.1
    attr[:, 0, 0, 0] = 1.0  # the attribution points at the one informative coordinate
    train, test = (images[:192], labels[:192], attr[:192]), (images[192:], labels[192:], attr[192:])
    result = diffroar(lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), train, test, fractions=(0.125, 0.5),
                      runs=2, epochs=15, batch_size=32, lr=0.05)
    assert set(result["fractions"]) == {0.125, 0.5}
    for r in result["fractions"].values():
        assert len(r["top"]) == 2 and r["diff"] == pytest.approx(np.mean(np.subtract(r["top"], r["bottom"])))
        assert min(r["top"]) > 0.9 and max(r["bottom"]) < 0.75
    assert result["mean"] > 0.3


def test_gradient_display():
    g = torch.tensor([[[[0.0, 1.0, 2.0, 3.0, 4.0, 100.0]]]])
    out = gradient_display(g)
    flat = g.double().flatten()
    low, high = flat.mean() - 3 * flat.std(unbiased=False), flat.mean() + 3 * flat.std(unbiased=False)
    expected = (flat.clamp(low, high) - low) / (high - low)
    assert torch.allclose(out.flatten().double(), expected, atol=1e-6)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert gradient_display(torch.full((2, 1, 2, 2), 7.0)).eq(0.5).all()
    with pytest.raises(ValueError, match="4 dimensions"):
        gradient_display(torch.zeros(2, 2))


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5)).double()


def test_gradients_match_per_sample_autograd(gen):
    model = _model()
    images = torch.rand(5, 3, 6, 6, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 4, 2, 2, 1])
    loss_g = loss_gradients(model, images, targets, batch_size=2)
    sal = saliency(model, images, targets, batch_size=3)
    for i in range(5):
        x = images[i:i + 1].clone().requires_grad_(True)
        logits = model(x)
        (g_loss,) = torch.autograd.grad(nn.functional.cross_entropy(logits, targets[i:i + 1]), x)
        (g_logit,) = torch.autograd.grad(model(x)[0, targets[i]], x)
        assert torch.allclose(loss_g[i], g_loss[0])
        assert torch.allclose(sal[i], g_logit[0].abs())
    maps = explanation_maps(model, images, targets, "saliency")
    assert torch.allclose(maps, sal.sum(dim=1))
    cam = explanation_maps(model, images, targets, "gradcam", layer="1")
    assert cam.shape == (5, 6, 6) and bool((cam >= 0).all())
    with pytest.raises(ValueError, match="unknown explanation method"):
        explanation_maps(model, images, targets, "lime")
    with pytest.raises(ValueError, match="no layer 'nope'"):
        explanation_maps(model, images, targets, "gradcam", layer="nope")
