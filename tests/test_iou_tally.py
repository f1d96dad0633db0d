import pytest
import torch
import torch.nn.functional as F

import kdfast.ops as ops
from kdfast.ops.iou_tally import iou_tally, upsample_reference

from conftest import requires_cuda


def make_batch(gen, B=3, U=5, h=7, w=7, P=2, S=(14, 14), Q=1, L=20, C=6, ties=False, q=0.1, image_label=None):
    """Random activations and label planes; thresholds are actual activation values (the dissection's case).
    `image_label` fixes every image's first image-level label (so that a tiny case surely tallies something)."""
    if ties:
        acts = torch.randint(0, 3, (B, U, h, w), generator=gen).float()
    else:
        acts = torch.randn(B, U, h, w, generator=gen)
    if acts.numel():
        thresholds = ops.unit_topk_reference(acts, max(1, int(q * B * h * w)))[:, -1].float()
    else:
        thresholds = torch.randn(U, generator=gen)
    seg = torch.randint(0, L, (B, P, *S), generator=gen, dtype=torch.int32)
    seg[seg < L // 4] = 0  # plenty of unlabeled pixels
    image_labels = torch.randint(0, L, (B, Q), generator=gen, dtype=torch.int32)
    if image_label is not None:
        image_labels[:, 0] = image_label
    label_category = torch.randint(0, C, (L,), generator=gen)
    label_category[0] = -1
    label_category[1] = -1  # a label with no selected category
    return acts, thresholds, seg, image_labels, label_category, C


def assert_same_counts_on_cuda(tally, args, **kwargs):
    """tally(*args, **kwargs) (iou_tally or the raw op) with its tensors on the GPU equals it on the CPU, output by
    output, exactly."""
    cpu = tally(*args, **kwargs)
    cuda = tally(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
    names = getattr(cpu, "_fields", range(len(cpu)))
    for name, c, g in zip(names, cpu, cuda, strict=True):
        assert torch.equal(c, g.cpu()), name


CASES = {
    "default": {},
    "one_by_one_maps": dict(h=1, w=1, q=0.7),
    "non_square": dict(h=5, w=3, S=(12, 10)),
    "downsample": dict(h=9, w=9, S=(4, 4)),
    "no_planes": dict(P=0),
    "no_image_labels": dict(Q=0),
    "single": dict(B=1, U=1, h=2, w=2, S=(3, 3), L=3, C=1, q=0.5, image_label=2),
    "ties": dict(ties=True, q=0.4),
    "empty_batch": dict(B=0),
    "many_labels": dict(L=300, C=3, Q=3),
}


def test_upsample_reference_is_half_pixel_bilinear(gen):
    for h, w, S in [(7, 7, (112, 112)), (5, 3, (12, 10)), (1, 1, (4, 4)), (9, 9, (4, 4))]:
        x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
        expected = F.interpolate(x, size=S, mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsample_reference(x, S), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_kernel_equals_float64_reference(gen, case, gated):
    acts, thr, seg, img, cat, C = make_batch(gen, **CASES[case])
    got = iou_tally(acts, thr, seg, img, cat, C, category_gated=gated)
    expected = ops.iou_tally_reference(acts.double(), thr.double(), seg, img, cat, C, category_gated=gated)
    for name, g, e in zip(got._fields, got, expected):
        assert g.dtype == torch.int64 and torch.equal(g, e), (case, name)
    if acts.numel():
        assert got.activations.sum() > 0, "the case must activate some pixels to test anything"


def test_constant_map_at_threshold_is_inactive():
    acts = torch.full((1, 1, 3, 3), 2.0)
    seg = torch.ones(1, 1, 8, 8, dtype=torch.int32)
    cat = torch.tensor([-1, 0])
    at = iou_tally(acts, torch.tensor([2.0]), seg, torch.zeros(1, 0, dtype=torch.int32), cat, 1)
    assert at.intersections.sum() == 0 and at.activations.sum() == 0
    below = iou_tally(acts, torch.tensor([1.999]), seg, torch.zeros(1, 0, dtype=torch.int32), cat, 1)
    assert below.intersections[0, 1] == 64 and below.activations[0, 0] == 64
    assert below.label_counts.tolist() == [0, 64]


def test_image_level_label_counts_for_its_category():
    # One active pixel region, no pixel labels at all: only the scene label (category 1) is touched, so
    # the activation is counted for category 1 (NetDissect-Lite keeps a stale category vector here).
    acts = torch.zeros(1, 1, 2, 2)
    acts[0, 0, 0, 0] = 1.0
    seg = torch.zeros(1, 1, 4, 4, dtype=torch.int32)
    img = torch.tensor([[2]], dtype=torch.int32)
    cat = torch.tensor([-1, 0, 1])
    got = iou_tally(acts, torch.tensor([0.5]), seg, img, cat, 2)
    active = int((upsample_reference(acts, (4, 4)) > 0.5).sum())
    assert active > 0
    assert got.activations.tolist() == [[0, active]]
    assert got.intersections[0, 2] == active
    assert got.label_counts.tolist() == [0, 0, 16]


def test_gated_vs_original_denominator():
    # The unit fires on the left half; category 0 (label 1) lies only on the right half.
    acts = torch.tensor([[[[1.0, 0.0]]]]).expand(1, 1, 2, 2).contiguous()
    seg = torch.zeros(1, 1, 2, 4, dtype=torch.int32)
    seg[..., 2:] = 1
    cat = torch.tensor([-1, 0])
    img = torch.zeros(1, 0, dtype=torch.int32)
    gated = iou_tally(acts, torch.tensor([0.5]), seg, img, cat, 1, category_gated=True)
    original = iou_tally(acts, torch.tensor([0.5]), seg, img, cat, 1, category_gated=False)
    assert gated.activations.tolist() == [[0]]
    assert original.activations.tolist() == [[int((upsample_reference(acts, (2, 4)) > 0.5).sum())]]


def _with_nan(acts):
    acts = acts.clone()
    acts[0, 0, 0, 0] = float("nan")
    return acts


BAD_INPUTS = {
    # argument index -> replacement, expected error, message fragment
    "nan_acts": (0, _with_nan, ValueError, "acts contains 1 NaN or Inf"),
    "float_seg": (2, lambda seg: seg.float(), TypeError, "seg must be an integer tensor"),
    "seg_3d": (2, lambda seg: seg[:, 0], ValueError, r"seg must be \(B, P, S_h, S_w\)"),
    "short_thresholds": (1, lambda thr: thr[:2], RuntimeError, r"thresholds must be \(U,\)"),
    "seg_label_unknown": (2, lambda seg: seg + 100, RuntimeError, "seg holds label numbers"),
    "negative_image_label": (3, lambda img: img - 100, RuntimeError, "image_labels holds label numbers"),
    "category_out_of_range": (4, lambda cat: cat + 50, RuntimeError, "label_category entries"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_are_named(gen, case):
    index, replace, error, match = BAD_INPUTS[case]
    args = list(make_batch(gen))
    args[index] = replace(args[index])
    with pytest.raises(error, match=match):
        iou_tally(*args)


def test_opcheck(gen):
    acts, thr, seg, img, cat, C = make_batch(gen)
    for gated in (True, False):
        torch.library.opcheck(torch.ops.kdfast.iou_tally.default, (acts, thr, seg, img, cat, C, gated))
    torch.library.opcheck(torch.ops.kdfast.iou_tally.default, (acts, thr, seg, img, cat, C, True, True))


@pytest.mark.parametrize("case", ["default", "many_labels", "no_planes", "empty_batch"])
def test_vouched_inputs_give_the_same_counts(gen, case):
    """labels_validated / check_finite=False (the dissection's call: no host read on a GPU) change no count."""
    args = make_batch(gen, **CASES[case])
    for gated in (True, False):
        want = iou_tally(*args, category_gated=gated)
        got = iou_tally(*args, category_gated=gated, labels_validated=True, check_finite=False)
        assert all(torch.equal(w, g) for w, g in zip(want, got))


@pytest.mark.parametrize("case", ["seg_label_unknown", "negative_image_label", "category_out_of_range"])
def test_cpu_checks_label_ranges_even_when_vouched_for(gen, case):
    """A broken promise cannot corrupt memory on the CPU: its op checks label ranges whatever the flag says."""
    index, replace, error, match = BAD_INPUTS[case]
    args = list(make_batch(gen))
    args[index] = replace(args[index])
    with pytest.raises(error, match=match):
        iou_tally(*args, labels_validated=True)


def test_unchecked_nan_maps_count_as_inactive(gen):
    """check_finite=False: a NaN pixel is never active (the float64 reference's rule), on every backend."""
    acts, thr, seg, img, cat, C = make_batch(gen, B=2, U=3, q=0.3)
    acts[0, 0, 1, 2] = float("nan")
    acts[1, 1] = float("nan")
    want = ops.iou_tally_reference(acts.double(), thr.double(), seg, img, cat, C)
    got = iou_tally(acts, thr, seg, img, cat, C, check_finite=False, labels_validated=True)
    assert all(torch.equal(w, g) for w, g in zip(want, got))


@requires_cuda
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_counts_identical_to_cpu(gen, case):
    args = make_batch(gen, **CASES[case])
    for gated in (True, False):
        assert_same_counts_on_cuda(iou_tally, args, category_gated=gated)


@requires_cuda
def test_cuda_vouched_labels_equal_cpu(gen):
    args = make_batch(gen, **CASES["many_labels"])
    assert_same_counts_on_cuda(iou_tally, args, labels_validated=True, check_finite=False)


@requires_cuda
def test_cuda_huge_maps_equal_cpu(gen):
    """h + w > 12288: the CUDA kernel keeps the maxima in global memory (was refused)."""
    args = make_batch(gen, B=2, U=3, h=1, w=12300, P=2, S=(4, 40), q=0.02)
    assert_same_counts_on_cuda(iou_tally, args)


@requires_cuda
def test_cuda_layer4_scale_equals_cpu(gen):
    args = make_batch(gen, B=16, U=512, h=7, w=7, P=4, S=(112, 112), Q=2, L=1200, C=6, q=0.005)
    assert_same_counts_on_cuda(iou_tally, args)
