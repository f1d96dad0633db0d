"""Each loss of kdfast.distill.losses against a direct re-derivation of its formula in float64 (numpy, loops)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdfast.distill import losses

SHAPES = [(1, 1), (1, 5), (7, 3), (16, 100)]


def rng(seed):
    return np.random.default_rng(seed)


def t64(array, grad=False):
    return torch.tensor(array, dtype=torch.float64, requires_grad=grad)


def log_softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl_np(zs, zt, T):
    """T²·mean_b Σ_c p_t (log p_t − log p_s)."""
    ls, lt = log_softmax_np(zs / T), log_softmax_np(zt / T)
    return T * T * np.mean(np.sum(np.exp(lt) * (lt - ls), axis=1))


def ce_np(z, y):
    return -np.mean(log_softmax_np(z)[np.arange(len(y)), y])


def logits_pair(shape, seed, scale=3.0):
    g = rng(seed)
    return g.normal(size=shape) * scale, g.normal(size=shape) * scale, g.integers(0, shape[1], size=shape[0])


# ------------------------------------------------------------------------------------------------ KL and KD
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_soft_target_kl_matches_formula(shape, temperature):
    zs, zt, _ = logits_pair(shape, seed=shape[0] * 100 + shape[1])
    got = losses.soft_target_kl(t64(zs), t64(zt), temperature)
    assert got.item() == pytest.approx(kl_np(zs, zt, temperature), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_target_kl_gradient_is_temperature_times_probability_gap(temperature):
    # d/dz_s T²·KL = T·(p_s(T) − p_t(T))/B; Hinton's soft cross-entropy has the same gradient.
    zs, zt, _ = logits_pair((6, 9), seed=1)
    student = t64(zs, grad=True)
    losses.soft_target_kl(student, t64(zt), temperature).backward()
    expected = temperature * (np.exp(log_softmax_np(zs / temperature)) - np.exp(log_softmax_np(zt / temperature))) / 6
    np.testing.assert_allclose(student.grad.numpy(), expected, rtol=1e-10, atol=1e-14)


def test_soft_target_kl_is_zero_for_identical_logits_and_finite_for_extreme_ones():
    z = t64(rng(2).normal(size=(5, 7)) * 1e4)
    assert losses.soft_target_kl(z, z.clone(), 4.0).item() == 0.0
    zs, zt = rng(3).normal(size=(5, 7)) * 1e4, rng(4).normal(size=(5, 7)) * 1e4
    got = losses.soft_target_kl(t64(zs), t64(zt), 1.0).item()
    assert math.isfinite(got) and got == pytest.approx(kl_np(zs, zt, 1.0), rel=1e-10)


def test_soft_target_kl_with_a_minus_inf_teacher_logit_matches_kl_on_probabilities():
    """A masked class (teacher logit −inf, probability 0) adds nothing, as in torchdistill's KLDivLoss on
    probabilities (xlogy); the student's gradient stays finite."""
    zs = t64([[0.5, -1.0, 2.0], [1.0, 0.0, -3.0]]).requires_grad_(True)
    zt = t64([[1.0, float("-inf"), 0.0], [float("-inf"), 2.0, 1.0]])
    got = losses.soft_target_kl(zs, zt, 2.0)
    want = 4.0 * torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(zs / 2.0, dim=1), F.softmax(zt / 2.0, dim=1))
    assert torch.isfinite(got) and torch.allclose(got, want, rtol=1e-12, atol=0)
    got.backward()
    assert torch.isfinite(zs.grad).all()


def test_soft_target_kl_is_zero_for_a_single_class():
    assert losses.soft_target_kl(t64([[3.0]]), t64([[-5.0]]), 4.0).item() == 0.0


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_kd_loss_matches_formula(alpha, shape):
    zs, zt, y = logits_pair(shape, seed=7 + shape[1])
    got = losses.kd_loss(t64(zs), t64(zt), torch.tensor(y), alpha=alpha, temperature=4.0)
    expected = (1 - alpha) * ce_np(zs, y) + alpha * kl_np(zs, zt, 4.0)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 0.5, 0.9, 1.0])
def test_kd_gradient_carries_the_t_squared_factor_for_every_alpha(alpha):
    # Without T² the soft part's gradient would be T² = 16 times smaller than α·T·(p_s − p_t)/B.
    T, batch = 4.0, 5
    zs, zt, y = logits_pair((batch, 6), seed=11)
    student = t64(zs, grad=True)
    losses.kd_loss(student, t64(zt), torch.tensor(y), alpha=alpha, temperature=T).backward()
    onehot = np.eye(6)[y]
    hard = (1 - alpha) * (np.exp(log_softmax_np(zs)) - onehot) / batch
    soft = alpha * T * (np.exp(log_softmax_np(zs / T)) - np.exp(log_softmax_np(zt / T))) / batch
    np.testing.assert_allclose(student.grad.numpy(), hard + soft, rtol=1e-9, atol=1e-14)


def test_kd_loss_defaults_are_the_papers():
    zs, zt, y = logits_pair((4, 5), seed=12)
    got = losses.kd_loss(t64(zs), t64(zt), torch.tensor(y))
    assert got.item() == pytest.approx(0.5 * ce_np(zs, y) + 0.5 * kl_np(zs, zt, 4.0), rel=1e-10)


# --------------------------------------------------------------------------------------- label smoothing, CE
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_label_smoothing_matches_formula(alpha, shape):
    z, _, y = logits_pair(shape, seed=13 + shape[0])
    log_p = log_softmax_np(z)
    expected = np.mean((1 - alpha) * -log_p[np.arange(len(y)), y] + alpha * -log_p.mean(axis=1))
    got = losses.label_smoothing_loss(t64(z), torch.tensor(y), alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_label_smoothing_of_constant_logits_is_log_classes():
    got = losses.label_smoothing_loss(torch.zeros(3, 8, dtype=torch.float64), torch.tensor([0, 3, 7]), alpha=0.1)
    assert got.item() == pytest.approx(math.log(8), rel=1e-12)


def test_supervised_loss_is_ce_or_per_class_bce():
    z, _, y = logits_pair((6, 4), seed=14)
    assert losses.supervised_loss(t64(z), torch.tensor(y)).item() == pytest.approx(ce_np(z, y), rel=1e-10)
    labels = rng(15).integers(0, 2, size=(6, 4)).astype(np.float64)
    bce = np.mean(labels * np.logaddexp(0, -z) + (1 - labels) * np.logaddexp(0, z))
    assert losses.supervised_loss(t64(z), t64(labels)).item() == pytest.approx(bce, rel=1e-10)


# ---------------------------------------------------------------------------------------------- multi-label KD
def log_sigmoid_np(z):
    return -np.logaddexp(0, -z)


def multilabel_np(zs, zt, tau):
    pt = np.exp(log_sigmoid_np(zt / tau))
    total = 0.0
    for b in range(zs.shape[0]):
        for j in range(zs.shape[1]):
            a, c = zt[b, j] / tau, zs[b, j] / tau
            total += pt[b, j] * (log_sigmoid_np(a) - log_sigmoid_np(c))
            total += (1 - pt[b, j]) * (log_sigmoid_np(-a) - log_sigmoid_np(-c))
    return tau * total / zs.shape[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tau", [1.0, 5.0])
def test_multilabel_kd_matches_formula(shape, tau):
    zs, zt, _ = logits_pair(shape, seed=16 + shape[1])
    got = losses.multilabel_kd_loss(t64(zs), t64(zt), temperature=tau)
    assert got.item() == pytest.approx(multilabel_np(zs, zt, tau), rel=1e-10, abs=1e-12)


def test_multilabel_kd_identical_is_zero_and_extreme_logits_stay_finite():
    z = t64(rng(17).normal(size=(3, 20)) * 50)
    assert losses.multilabel_kd_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-12)
    zs, zt = rng(18).normal(size=(3, 20)) * 1e3, rng(19).normal(size=(3, 20)) * 1e3
    got = losses.multilabel_kd_loss(t64(zs), t64(zt)).item()
    assert math.isfinite(got) and got == pytest.approx(multilabel_np(zs, zt, 1.0), rel=1e-9)


# ------------------------------------------------------------------------------------------------------ AT, FT
def attention_np(a):
    q = (a**2).mean(axis=1).reshape(a.shape[0], -1)
    norms = np.sqrt((q**2).sum(axis=1, keepdims=True))
    return q / np.maximum(norms, 1e-12)


@pytest.mark.parametrize(
    "shapes", [((1, 1, 1, 1), (1, 3, 1, 1)), ((2, 4, 3, 5), (2, 6, 3, 5)), ((5, 8, 7, 7), (5, 8, 7, 7))]
)
def test_attention_transfer_matches_formula(shapes):
    g = rng(20)
    fs, ft = g.normal(size=shapes[0]), g.normal(size=shapes[1])
    np.testing.assert_allclose(losses.attention_map(t64(fs)).numpy(), attention_np(fs), rtol=1e-12)
    expected = np.mean((attention_np(fs) - attention_np(ft)) ** 2)
    assert losses.attention_transfer_loss(t64(fs), t64(ft)).item() == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_attention_edge_cases():
    zero = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    assert torch.equal(losses.attention_map(zero), torch.zeros(2, 16, dtype=torch.float64))
    constant = torch.full((1, 3, 2, 2), 2.0, dtype=torch.float64)
    assert torch.allclose(losses.attention_map(constant), torch.full((1, 4), 0.5, dtype=torch.float64))
    f = t64(rng(21).normal(size=(2, 3, 4, 4)))
    assert losses.attention_transfer_loss(f, 3 * f).item() == pytest.approx(0.0, abs=1e-15)  # scale invariant
    with pytest.raises(ValueError, match="spatial size"):
        losses.attention_transfer_loss(f, torch.zeros(2, 3, 2, 2, dtype=torch.float64))


def ft_np(fs, ft, p):
    fs, ft = fs.reshape(len(fs), -1), ft.reshape(len(ft), -1)
    ns = fs / np.linalg.norm(fs, axis=1, keepdims=True)
    nt = ft / np.linalg.norm(ft, axis=1, keepdims=True)
    return np.abs(ns - nt).mean() if p == 1 else np.linalg.norm(ns - nt, axis=1).mean()


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 4, 2, 2), (6, 16, 7, 7)])
@pytest.mark.parametrize("p", [1, 2])
def test_factor_transfer_matches_formula(shape, p):
    g = rng(22)
    fs, ft = g.normal(size=shape), g.normal(size=shape)
    got = losses.factor_transfer_loss(t64(fs), t64(ft), p=p)
    assert got.item() == pytest.approx(ft_np(fs, ft, p), rel=1e-10, abs=1e-15)


def test_factor_transfer_edge_cases():
    f = t64(rng(23).normal(size=(2, 3, 2, 2)))
    assert losses.factor_transfer_loss(f, 5 * f).item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="same shape"):
        losses.factor_transfer_loss(f, f[:1])
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        losses.factor_transfer_loss(f, f, p=3)


# --------------------------------------------------------------------------------------------------------- CRD
@pytest.mark.parametrize("shape", [(1, 2), (4, 9), (8, 65)])
def test_nce_contrast_loss_matches_formula(shape):
    scores = rng(24).uniform(1e-4, 2.0, size=shape)
    n, eps = 1000, 1e-7
    k = shape[1] - 1
    pn = 1.0 / n
    total = 0.0
    for row in scores:
        total += math.log(row[0] / (row[0] + k * pn + eps))
        total += sum(math.log(k * pn / (x + k * pn + eps)) for x in row[1:])
    got = losses.nce_contrast_loss(t64(scores), n)
    assert got.item() == pytest.approx(-total / shape[0], rel=1e-10)


def test_nce_contrast_loss_needs_a_negative():
    with pytest.raises(ValueError, match="negative"):
        losses.nce_contrast_loss(torch.ones(3, 1), 10)


# -------------------------------------------------------------------------------------------------------- SSKD
@pytest.mark.parametrize("batch", [1, 3])
def test_rotation_similarities_matches_loop(batch):
    e = rng(25).normal(size=(4 * batch, 6))
    got = losses.rotation_similarities(t64(e)).numpy()
    assert got.shape == (3 * batch, batch)
    for b in range(batch):
        for r in range(3):
            for c in range(batch):
                u, v = e[4 * b + 1 + r], e[4 * c]
                assert got[3 * b + r, c] == pytest.approx(u @ v / np.linalg.norm(u) / np.linalg.norm(v), rel=1e-10)
    with pytest.raises(ValueError, match="groups of four"):
        losses.rotation_similarities(t64(e[:-1]))


def selection_np(scores, targets, ratio):
    rank = [int(sum(s > row[t] for s in row)) for row, t in zip(scores, targets)]
    correct = [i for i, r in enumerate(rank) if r == 0]
    wrong = sorted((r, i) for i, r in enumerate(rank) if r > 0)
    return sorted(correct + [i for _, i in wrong[: int(len(wrong) * ratio)]])


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 1.0])
def test_error_level_selection_matches_ranking(ratio):
    g = rng(26)
    scores = g.integers(0, 4, size=(30, 5)).astype(np.float64)  # many ties
    targets = g.integers(0, 5, size=30)
    got = losses.error_level_selection(t64(scores), torch.tensor(targets), ratio).tolist()
    assert got == selection_np(scores, targets, ratio)


def test_error_level_selection_hand_case():
    scores = t64([[3, 1, 0], [0, 2, 1], [1, 0, 5], [2, 2, 0]])  # target ranks: 0, 1, 2, 0 (tie counts as first)
    targets = torch.tensor([0, 2, 1, 1])
    assert losses.error_level_selection(scores, targets, 0.0).tolist() == [0, 3]
    assert losses.error_level_selection(scores, targets, 0.5).tolist() == [0, 1, 3]
    assert losses.error_level_selection(scores, targets, 1.0).tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_naming_the_problem():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="empty batch"):
        losses.soft_target_kl(torch.zeros(0, 4), torch.zeros(0, 4), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        losses.soft_target_kl(z, torch.randn(3, 5), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        losses.soft_target_kl(z, z, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        losses.kd_loss(z, z, torch.tensor([0, 1, 2]), alpha=1.5)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\)"):
        losses.kd_loss(z, z, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="targets must be"):
        losses.label_smoothing_loss(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="multi-label targets"):
        losses.supervised_loss(z, torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        losses.multilabel_kd_loss(torch.randn(4), torch.randn(4))
