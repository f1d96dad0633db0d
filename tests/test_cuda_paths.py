"""CUDA paths that only a GPU can run (marked `cuda`: scripts/gpu_check.py runs them on a lent GPU; skipped
elsewhere): streaming top-k, grid tiling beyond 65535 blocks, float64 scalars in the Triton kernels,
B-cos under bf16 autocast, batched explanations and an e2KD training step, each against the CPU."""
import pytest
import torch

import kdfast.ops as ops
from kdfast.ops import bcos_conv as bcos_ops
from kdfast.ops.iou_tally import iou_tally
from kdfast.ops.topk_threshold import topk_threshold

from conftest import requires_cuda
from test_iou_tally import assert_same_counts_on_cuda, make_batch


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@requires_cuda
def test_streaming_topk_on_cuda_equals_cpu(gen):
    acts = torch.randn(40, 16, 7, 7, generator=gen)
    k = ops.quantile_rank(0.01, 40 * 49)
    cpu, gpu = ops.StreamingTopK(16, k), ops.StreamingTopK(16, k, device="cuda")
    for lo in range(0, 40, 7):
        cpu.update(acts[lo : lo + 7])
        gpu.update(acts[lo : lo + 7].cuda())
    assert torch.equal(gpu.values().cpu(), cpu.values())


@requires_cuda
def test_topk_sampled_path_and_unit_tiling_on_cuda(gen):
    big = torch.randn(1400, 64, 7, 7, generator=gen)  # 68,600 >= 8 x 8192 values per unit: the sampled pivot
    for q in (0.005, 0.05, 0.5):  # sampled, sampled, full radix
        assert torch.equal(topk_threshold(big.cuda(), q).cpu(), topk_threshold(big, q))
    k = ops.quantile_rank(0.005, 1400 * 49)
    assert torch.equal(ops.unit_topk(big.cuda(), k).cpu(), ops.unit_topk(big, k))
    many_units = torch.randn(9, 70000, generator=gen)  # (M, U): U > 65535 units on grid.y
    assert torch.equal(ops.unit_topk(many_units.cuda(), 3).cpu(), ops.unit_topk(many_units, 3))
    bad = big.clone()
    bad[5, 3, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or Inf"):
        torch.ops.kdfast.topk_threshold(bad.cuda(), 100)


@requires_cuda
def test_tally_tiles_more_than_65535_images(gen):
    args = make_batch(gen, B=70000, U=2, h=2, w=2, P=1, S=(2, 2), Q=1, L=5, C=2, q=0.3)
    assert_same_counts_on_cuda(iou_tally, args)


@requires_cuda
def test_tally_nan_maps_count_alike_on_cuda(gen):
    acts, thr, seg, img, cat, C = make_batch(gen, B=2, U=3, q=0.3)
    acts[0, 0, 1, 2] = float("nan")
    acts[0, 1] = float("nan")
    assert_same_counts_on_cuda(torch.ops.kdfast.iou_tally, (acts, thr, seg, img, cat, C, True))


@requires_cuda
def test_float64_triton_kernels_keep_float64_scalars(gen):
    s, t = (torch.randn(4, 30, generator=gen, dtype=torch.float64) for _ in range(2))
    u, v = (torch.randn(4, 50, generator=gen, dtype=torch.float64) for _ in range(2))
    T, lam = 2.3, 0.7  # no float32 numbers
    want = ops.kd_explain_loss_reference(s, t, u, v, T, lam)
    got = ops.kd_explain_loss_terms(s.cuda(), t.cuda(), u.cuda(), v.cuda(), T, lam)
    for g, w in zip(got, want):
        assert abs(g.item() - w.item()) <= 1e-12 * max(1.0, abs(w.item()))
    x = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, generator=gen, dtype=torch.float64)
    w = w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)
    want = bcos_ops.bcos_conv2d_reference(x, w, 1, 1, 1, 1, 1, 2.3)[0]
    assert _rel(bcos_ops.bcos_conv2d(x.cuda(), w.cuda(), 1, 1, 1, 1, 1, 2.3), want) < 1e-12


@requires_cuda
def test_bcos_conv_under_bf16_autocast(gen):
    x = torch.randn(2, 16, 14, 14, generator=gen)
    w = torch.randn(32, 16, 3, 3, generator=gen)
    w = w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)
    want = bcos_ops.bcos_conv2d_reference(x.double(), w.double(), 1, 1)[0]
    xc, wc = x.cuda().requires_grad_(), w.cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = bcos_ops.bcos_conv2d(xc, wc, 1, 1)
    assert got.dtype == torch.bfloat16
    assert _rel(got, want) < 2e-2
    got.float().square().sum().backward()
    assert torch.isfinite(xc.grad).all() and torch.isfinite(wc.grad).all()


@requires_cuda
def test_batched_explanations_on_cuda_equal_cpu(gen):
    from kdfast.models import bcos as kb

    torch.manual_seed(0)
    model = kb.bcos_resnet18(6, inplanes=4, small_inputs=True).double().eval()
    x = kb.encode_input(torch.rand(3, 3, 16, 16, generator=gen, dtype=torch.float64))
    classes = torch.tensor([1, 4, 1])
    cpu = kb.explain_batch(model, x, classes)
    gpu = kb.explain_batch(model.cuda(), x.cuda(), classes.cuda())
    assert _rel(gpu.weights, cpu.weights) < 1e-10 and _rel(gpu.logits, cpu.logits) < 1e-10


@requires_cuda
def test_e2kd_step_on_cuda_equals_cpu(gen):
    from kdfast.distill.e2kd import E2KDBcos
    from kdfast.models import bcos as kb

    torch.manual_seed(3)
    student = kb.bcos_resnet18(num_classes=5, inplanes=4, small_inputs=True).double()
    teacher = kb.bcos_resnet18(num_classes=5, inplanes=8, small_inputs=True).double().eval()
    images = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    batch = {"images": images, "targets": torch.tensor([0, 1]), "indices": torch.arange(2)}
    results = []
    for device in ("cpu", "cuda"):
        s, t = (m.to(device) for m in (student, teacher))
        out = E2KDBcos(tau=2.0, lam=5.0)(s, t, {k: v.to(device) for k, v in batch.items()})
        s.zero_grad(set_to_none=True)
        out.loss.backward()
        results.append((out.loss.detach().cpu(), [p.grad.detach().cpu() for p in s.parameters() if p.grad is not None]))
    (loss_cpu, grads_cpu), (loss_gpu, grads_gpu) = results
    assert _rel(loss_gpu, loss_cpu) < 1e-10 and len(grads_cpu) == len(grads_gpu) > 0
    assert max(_rel(g, c) for g, c in zip(grads_gpu, grads_cpu)) < 1e-8
