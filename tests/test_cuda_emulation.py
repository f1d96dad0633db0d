"""The CUDA kernels proven without a GPU: their block code (csrc/*/*_block.h, the same functions the CUDA
kernels run) executed on the host grid by grid, blocks in shuffled order and every phase's threads in a fresh
shuffled order between the kernels' barriers, compared with the CPU ops (which the float64 references check).
A race between phases (a missing barrier, a read before a write) or thread-count-dependent indexing shows up
as a wrong count here."""
import pytest
import torch

import kdfast.ops as ops
from kdfast import _extension
from kdfast.ops.iou_tally import iou_tally

from test_iou_tally import CASES, make_batch
from test_topk_threshold import _cases as topk_cases
from test_topk_threshold import _values

_C = _extension.load()
THREADS = (1, 37, 256)  # one thread, a count that is no warp multiple, the CUDA block size


def _emulated_tally(args, gated, threads, seed):
    acts, thr, seg, img, cat, C = args
    return _C._emulate_iou_tally_cuda(acts, thr, seg, img, cat, C, gated, threads, seed)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tally_blocks_equal_cpu(gen, case):
    args = make_batch(gen, **CASES[case])
    for gated in (True, False):
        cpu = iou_tally(*args, category_gated=gated)
        for seed, threads in enumerate(THREADS):
            got = _emulated_tally(args, gated, threads, seed)
            for name, c, g in zip(cpu._fields, cpu, got):
                assert torch.equal(c, g), (case, gated, threads, name)


def test_tally_blocks_layer4_like_with_active_pixels(gen):
    """layer4 shape (7x7 maps -> 112x112 labels, four label planes, 1200 labels) at q = 0.5%."""
    args = make_batch(gen, B=32, U=32, h=7, w=7, P=4, S=(112, 112), Q=2, L=1200, C=6, q=0.005)
    cpu = iou_tally(*args)
    assert cpu.activations.sum() > 0 and (cpu.intersections > 0).sum() > 100, "the case must activate pixels"
    for seed in range(2):
        got = _emulated_tally(args, True, 256, seed)
        assert all(torch.equal(c, g) for c, g in zip(cpu, got))


def test_tally_nan_and_inf_maps_agree_with_the_reference(gen):
    """Direct op calls (the wrapper rejects non-finite maps) count NaN pixels as inactive on every backend."""
    acts, thr, seg, img, cat, C = make_batch(gen, B=2, U=3, q=0.3)
    acts[0, 0, 1, 2] = float("nan")
    acts[0, 1] = float("nan")  # an all-NaN map
    acts[1, 2, 3, 3] = float("inf")
    acts[1, 0, 0, 0] = float("-inf")
    args = (acts, thr, seg, img, cat, C)
    want = ops.iou_tally_reference(acts.double(), thr.double(), seg, img, cat, C)
    cpu = torch.ops.kdfast.iou_tally(*args, True)
    emulated = _emulated_tally(args, True, 64, 3)
    for w, c, e in zip(want, cpu, emulated):
        assert torch.equal(w, c) and torch.equal(c, e)


def _emulated_topk(acts, k, sample, threads, blocks, seed):
    return _C._emulate_topk_cuda(acts, k, sample, threads, blocks, seed)


def test_topk_blocks_equal_cpu_on_every_layout(gen):
    for (name, acts), threads in zip(topk_cases(gen), (1, 37, 256) * 4):
        m = _values(acts)
        for k in sorted({1, max(1, m // 3), m}):
            thr, rows, _ = _emulated_topk(acts, k, 64, threads, 3, k)
            assert torch.equal(thr, torch.ops.kdfast.topk_threshold(acts, k)), (name, k)
            assert torch.equal(rows, ops.unit_topk(acts, k)), (name, k)


def test_topk_sampled_pivot_path_is_exact(gen):
    """Enough values per unit for the sampled pivot: one full read gathers the candidates."""
    cases = {
        "layer4_like": torch.randn(50, 6, 7, 7, generator=gen),
        "ties": torch.randint(-40, 40, (50, 4, 7, 7), generator=gen).float(),
        "mu_transposed": torch.randn(5, 2600, generator=gen).t(),
    }
    for name, acts in cases.items():
        m = _values(acts)
        for q in (0.005, 0.02):
            k = ops.quantile_rank(q, m)
            thr, rows, sampled = _emulated_topk(acts, k, 256, 96, 4, 1)
            assert sampled, name
            assert torch.equal(thr, ops.topk_threshold_reference(acts, k)), (name, q)
            assert torch.equal(rows, ops.unit_topk_reference(acts, k)), (name, q)


def test_topk_falls_back_when_the_sample_misleads(gen):
    """Values planted at exactly the sampled positions push the pivot above the k-th largest: too few
    candidates, so the full radix select runs on the data and the answer stays exact."""
    acts = torch.randn(3, 3000, generator=gen).t().contiguous()  # (M, U)
    sample = 256
    picked = torch.arange(sample) * 3000 // sample
    acts[picked] = 100.0 + torch.arange(sample, dtype=torch.float32)[:, None]
    k = 40  # the pivot is the 23rd largest sampled value: only 23 candidates for the top 40
    thr, rows, sampled = _emulated_topk(acts, k, sample, 64, 2, 0)
    assert not sampled
    assert torch.equal(thr, ops.topk_threshold_reference(acts, k))
    assert torch.equal(rows, ops.unit_topk_reference(acts, k))


@pytest.mark.parametrize("sample", [64, 256])  # the full path and the sampled path
def test_topk_nonfinite_values_are_rejected_by_the_one_read(gen, sample):
    acts = torch.randn(50, 2, 7, 7, generator=gen)
    acts[17, 1, 3, 3] = float("nan")
    acts[3, 0, 0, 1] = float("inf")
    with pytest.raises(ValueError, match="2 NaN or Inf"):
        _emulated_topk(acts, 10, sample, 64, 2, 0)
    with pytest.raises(ValueError, match="2 NaN or Inf"):
        torch.ops.kdfast.topk_threshold(acts, 10)
