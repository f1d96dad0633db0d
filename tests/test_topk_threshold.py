import pytest
import torch

import kdfast.ops as ops
from kdfast.ops.topk_threshold import quantile_rank, topk_threshold

from conftest import requires_cuda


def _cases(gen):
    """(name, acts) float32 inputs covering the layouts and edge cases the op must handle."""
    randn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    ints = lambda *s: torch.randint(-3, 4, s, generator=gen).float()  # noqa: E731  many ties
    wide = torch.randn(64, 3, generator=gen) * torch.tensor([1e-30, 1.0, 1e30])
    signed_zero = torch.tensor([[0.0, -0.0], [-0.0, 0.0], [1.0, -1.0]])
    return [
        ("nchw", randn(4, 6, 5, 3)),
        ("nchw_1x1", randn(9, 4, 1, 1)),
        ("mu", randn(50, 7)),
        ("single", randn(1, 1)),
        ("ties", ints(5, 3, 4, 4)),
        ("constant", torch.full((3, 2, 2, 2), 1.5)),
        ("huge", torch.tensor([[3e38, -3e38], [-3e38, 3e38], [1.0, 0.0]])),
        ("wide_range", wide),
        ("signed_zero", signed_zero),
        ("unit_slice", randn(3, 8, 4, 4)[:, 2:6]),  # non-contiguous units
        ("transposed", randn(6, 40).t()),  # (M, U) with unit-major strides
        ("strided_hw", randn(2, 3, 6, 6)[:, :, ::2, ::2]),
    ]


def _values(acts):
    return acts.shape[0] if acts.dim() == 2 else acts.shape[0] * acts.shape[2] * acts.shape[3]


def test_quantile_rank_is_exact_ceiling():
    assert quantile_rank(0.1, 30) == 3  # float 0.1*30 = 3.0000000000000004 would give 4
    assert quantile_rank(0.005, 63305 * 49) == 15510
    assert quantile_rank(1.0, 7) == 7
    assert quantile_rank(1e-9, 5) == 1
    for bad_q in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="quantile"):
            quantile_rank(bad_q, 10)
    with pytest.raises(ValueError, match="0 values"):
        quantile_rank(0.5, 0)


def test_unit_topk_and_threshold_equal_float64_reference(gen):
    for name, acts in _cases(gen):
        m = _values(acts)
        for k in sorted({1, max(1, m // 3), m}):
            expected = ops.unit_topk_reference(acts.double(), k)
            got = ops.unit_topk(acts, k)
            assert got.dtype == torch.float32 and got.shape == expected.shape, name
            assert torch.equal(got.double(), expected), (name, k)
            thr = torch.ops.kdfast.topk_threshold(acts, k)
            assert torch.equal(thr.double(), ops.topk_threshold_reference(acts.double(), k)), (name, k)


def test_topk_threshold_uses_ceil_q_m(gen):
    acts = torch.randn(10, 4, 3, 3, generator=gen)  # M = 90
    for q in (0.005, 0.1, 0.25, 0.5, 1.0):
        k = quantile_rank(q, 90)
        expected = torch.sort(acts.transpose(0, 1).reshape(4, -1).double(), dim=1, descending=True).values[:, k - 1]
        assert torch.equal(topk_threshold(acts, q).double(), expected)


def test_half_precision_is_widened_exactly(gen):
    acts = torch.randn(5, 3, 4, 4, generator=gen).half()
    assert torch.equal(topk_threshold(acts, 0.2), topk_threshold(acts.float(), 0.2))


@pytest.mark.parametrize(
    "acts, error, match",
    [
        (torch.tensor([[1.0, float("nan")]]), ValueError, "NaN or Inf"),
        (torch.tensor([[1.0, float("inf")]]), ValueError, "NaN or Inf"),
        (torch.ones(2, 3, dtype=torch.int64), TypeError, "float32"),
        (torch.ones(2, 3, dtype=torch.float64), TypeError, "float32"),
        (torch.ones(2, 3, 4), ValueError, r"\(M, U\) or \(N, U, H, W\)"),
        (torch.empty(0, 3, 4, 4), ValueError, "0 values"),
    ],
)
def test_bad_inputs_are_named(acts, error, match):
    with pytest.raises(error, match=match):
        topk_threshold(acts, 0.1)


def test_unit_topk_rejects_k_out_of_range():
    with pytest.raises(ValueError, match="k must be in"):
        ops.unit_topk(torch.ones(4, 2), 5)
    with pytest.raises(RuntimeError, match="k must be >= 1"):
        torch.ops.kdfast.unit_topk(torch.ones(4, 2), 0)


def test_streaming_equals_one_shot_for_any_batching(gen):
    for name, acts in _cases(gen):
        if acts.dim() != 4:
            continue
        m = _values(acts)
        k = max(1, m // 4)
        one_shot = ops.unit_topk(acts, k)
        for _ in range(3):
            stream = ops.StreamingTopK(acts.shape[1], k)
            cuts = sorted(torch.randint(0, acts.shape[0] + 1, (3,), generator=gen).tolist())
            for lo, hi in zip([0] + cuts, cuts + [acts.shape[0]]):
                stream.update(acts[lo:hi])  # includes empty batches
            assert stream.seen == m
            assert torch.equal(stream.values(), one_shot), name
            assert torch.equal(stream.threshold(), one_shot[:, -1])
            smaller = max(1, k // 2)
            assert torch.equal(stream.threshold(smaller), ops.unit_topk(acts, smaller)[:, -1])


def test_streaming_merge_and_state_round_trip(gen):
    acts = torch.randn(12, 5, 3, 3, generator=gen)
    k = 17
    a = ops.StreamingTopK(5, k).update(acts[:7])
    b = ops.StreamingTopK(5, k).update(acts[7:])
    restored = ops.StreamingTopK.from_state_dict(a.state_dict())
    restored.merge(b.values(), b.seen)
    assert restored.seen == 12 * 9
    assert torch.equal(restored.values(), ops.unit_topk(acts, k))


def test_streaming_rejects_early_threshold_and_wrong_units(gen):
    stream = ops.StreamingTopK(3, 10).update(torch.randn(1, 3, 2, 2, generator=gen))
    with pytest.raises(ValueError, match="only 4 values"):
        stream.threshold()
    with pytest.raises(ValueError, match="4 units"):
        stream.update(torch.randn(1, 4, 2, 2, generator=gen))


def test_opcheck(gen):
    acts = torch.randn(3, 4, 5, 5, generator=gen)
    torch.library.opcheck(torch.ops.kdfast.topk_threshold.default, (acts, 7))
    torch.library.opcheck(torch.ops.kdfast.unit_topk.default, (acts, 7))
    torch.library.opcheck(torch.ops.kdfast.unit_topk.default, (torch.randn(6, 30, generator=gen).t(), 3))


@requires_cuda
def test_cuda_equals_cpu(gen):
    for name, acts in _cases(gen):
        m = _values(acts)
        for k in sorted({1, max(1, m // 3), m}):
            assert torch.equal(ops.unit_topk(acts.cuda(), k).cpu(), ops.unit_topk(acts, k)), (name, k)
            assert torch.equal(torch.ops.kdfast.topk_threshold(acts.cuda(), k).cpu(),
                               torch.ops.kdfast.topk_threshold(acts, k)), (name, k)
    big = torch.randn(64, 512, 7, 7, generator=gen)
    assert torch.equal(topk_threshold(big.cuda(), 0.005).cpu(), topk_threshold(big, 0.005))
    torch.library.opcheck(torch.ops.kdfast.unit_topk.default, (big[:4].cuda(), 5))


@requires_cuda
def test_cuda_flat_vector_read_equals_cpu(gen):
    """>= 8·8192 values per unit, so the GPU takes the sampled pivot and its one read in 16-B vectors over the
    contiguous array: base pointers 0, 4, 8 and 12 B past 16-B alignment, and (M, U) row-major."""
    shapes = [(1400, 8, 7, 7), (1400, 8, 7, 7), (1400, 8, 7, 7), (1400, 8, 7, 7), (70001, 5)]
    for offset, shape in enumerate(shapes):
        numel = torch.Size(shape).numel()
        device = torch.randn(numel + 3, generator=gen).cuda()[offset % 4:][:numel].view(shape)  # offset on the GPU
        acts = device.cpu()
        m = _values(acts)
        for k in (1, quantile_rank(0.005, m)):
            assert torch.equal(torch.ops.kdfast.topk_threshold(device, k).cpu(),
                               torch.ops.kdfast.topk_threshold(acts, k)), (shape, offset, k)
            assert torch.equal(ops.unit_topk(device, k).cpu(), ops.unit_topk(acts, k)), (shape, offset, k)
