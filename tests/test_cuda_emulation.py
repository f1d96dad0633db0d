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


def _emulated_tally(args, gated, threads, seed, labels_validated=False):
    acts, thr, seg, img, cat, C = args
    return _C._emulate_iou_tally_cuda(acts, thr, seg, img, cat, C, gated, labels_validated, threads, seed)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tally_blocks_equal_cpu(gen, case):
    """With labels vouched for (the CUDA op then reads nothing on the host) and without: the same counts."""
    args = make_batch(gen, **CASES[case])
    for gated in (True, False):
        cpu = iou_tally(*args, category_gated=gated)
        for seed, threads in enumerate(THREADS):
            got = _emulated_tally(args, gated, threads, seed, labels_validated=seed % 2 == 1)
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


@pytest.mark.parametrize("shape", [(1, 12287, (4, 40)), (1, 12300, (4, 40)), (12290, 2, (50, 3))])
def test_tally_huge_maps_keep_their_maxima_in_global_memory(gen, shape):
    """h + w > 12288 floats do not fit 48 KB of shared memory: each block's maxima go to its slice of one global
    scratch array (h + w = 12288 still in shared memory). Blocks run their phases in lockstep here, so two
    blocks given the same slice would clash."""
    h, w, S = shape
    args = make_batch(gen, B=2, U=3, h=h, w=w, P=2, S=S, q=0.02)
    acts, thr, seg, img, cat, C = args
    want = ops.iou_tally_reference(acts.double(), thr.double(), seg, img, cat, C)
    cpu = iou_tally(*args)
    assert cpu.activations.sum() > 0, "the case must activate pixels"
    assert all(torch.equal(w_, c) for w_, c in zip(want, cpu))
    for seed, threads in enumerate((37, 256)):
        got = _emulated_tally(args, True, threads, seed)
        assert all(torch.equal(c, g) for c, g in zip(cpu, got)), threads


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
    paths = {"layer4_like": "pivot_flat", "ties": "pivot_flat", "mu_transposed": "pivot"}
    for name, acts in cases.items():
        m = _values(acts)
        for q in (0.005, 0.02):
            k = ops.quantile_rank(q, m)
            thr, rows, path = _emulated_topk(acts, k, 256, 96, 4, 1)
            assert path == paths[name], name
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
    thr, rows, path = _emulated_topk(acts, k, sample, 64, 2, 0)
    assert path == "radix"
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


def _misaligned(gen, shape, offset):
    """A contiguous tensor of `shape` starting `offset` floats past a 64-B aligned allocation."""
    numel = torch.Size(shape).numel()
    return torch.randn(numel + offset, generator=gen)[offset:].view(shape)


def _flat_cases(gen):
    """Contiguous layouts for the flat read (>= 2048 values per unit, so a 256-value sample pays)."""
    randn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {
        "layer4_like": randn(50, 6, 7, 7),  # 49-value runs: no unit starts 16-B aligned
        "hw1_nchw": randn(2100, 3, 1, 1),  # every value a new unit
        "hw2": randn(1030, 3, 1, 2),  # units change twice inside a vector
        "hw3": randn(700, 4, 3, 1),
        "odd": randn(83, 5, 5, 5),  # U·H·W = 125, total = 3 (mod 4): a tail
        "mu_row_major": randn(2100, 3),  # (M, U) contiguous: inner = 1
        "ties": torch.randint(-40, 40, (50, 4, 7, 7), generator=gen).float(),
        "misaligned_1": _misaligned(gen, (50, 6, 7, 7), 1),  # heads of 3, 2 and 1 values
        "misaligned_2": _misaligned(gen, (43, 3, 7, 7), 2),
        "misaligned_3": _misaligned(gen, (83, 5, 5, 5), 3),
    }


def test_topk_flat_vector_read_is_exact(gen):
    """Contiguous (N, U, H, W) and (M, U) tensors take the one read in 16-B vectors over the whole array (head
    and tail read one by one), each value's unit found by the cursor: equal to torch.topk and the CPU op."""
    for name, acts in _flat_cases(gen).items():
        m = _values(acts)
        for k in (1, ops.quantile_rank(0.005, m), ops.quantile_rank(0.02, m)):
            for threads, blocks in ((96, 3), (37, 1)):
                thr, rows, path = _emulated_topk(acts, k, 256, threads, blocks, k + threads)
                assert path == "pivot_flat", (name, k)
                assert torch.equal(thr, ops.topk_threshold_reference(acts, k)), (name, k, threads)
                assert torch.equal(thr, torch.ops.kdfast.topk_threshold(acts, k)), (name, k, threads)
                assert torch.equal(rows, ops.unit_topk_reference(acts, k)), (name, k, threads)


def test_topk_flat_read_reaches_the_head_and_the_tail(gen):
    """The largest value of the first unit is the array's first value (in the unaligned head) and the largest
    of the last unit the array's last value (in the tail): k = 1 finds both."""
    for offset in (1, 2, 3):
        acts = _misaligned(gen, (83, 5, 5, 5), offset)
        acts.view(-1)[0], acts.view(-1)[-1] = 50.0, 60.0
        thr, _, path = _emulated_topk(acts, 1, 256, 64, 2, offset)
        assert path == "pivot_flat"
        assert thr[0] == 50.0 and thr[-1] == 60.0
        assert torch.equal(thr, ops.topk_threshold_reference(acts, 1))


def test_topk_flat_read_counts_nonfinite_values_in_the_head_and_tail(gen):
    acts = _misaligned(gen, (83, 5, 5, 5), 2)  # a head of 2 values, 2593 vectors, a tail of 1
    acts.view(-1)[0], acts.view(-1)[-1], acts[40, 2, 2, 2] = float("nan"), float("-inf"), float("inf")
    with pytest.raises(ValueError, match="3 NaN or Inf"):
        _emulated_topk(acts, 10, 256, 64, 2, 0)


def test_topk_flat_read_falls_back_when_all_values_are_equal():
    """Every value is a candidate: the rows overflow, so the radix select runs over the data."""
    acts = torch.full((50, 3, 7, 7), -2.5)
    thr, rows, path = _emulated_topk(acts, 12, 256, 64, 2, 0)
    assert path == "radix"
    assert torch.equal(thr, torch.full((3,), -2.5)) and torch.equal(rows, torch.full((3, 12), -2.5))
