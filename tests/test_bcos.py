"""B-cos layers, models and batched explanations against the `bcos` package (B-cos v2) and against direct
float64 re-implementations; the fused B-cos conv op (C++ CPU kernel, Triton kernel under TRITON_INTERPRET=1)
against its plain-PyTorch definition."""
import math
import os
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdfast.models import bcos as kb
from kdfast.models.bcos_vit import bcos_vit_tiny
from kdfast.ops import bcos_conv as ops

from conftest import requires_cuda

try:  # the reference implementation (pip install bcos einops); only the comparisons with it need it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bcos.models.resnet as pkg_resnet
        import bcos.models.vit as pkg_vit
        from bcos.modules import BcosConv2d as PkgConv2d
        from bcos.modules import BcosLinear as PkgLinear
        from bcos.modules import BcosSequential, LogitLayer, norms
        from bcos.modules.norms.centered_norms import DetachableLayerNorm as PkgLayerNorm
    HAVE_BCOS = True
except ImportError:
    HAVE_BCOS = False
requires_bcos = pytest.mark.skipif(not HAVE_BCOS, reason="needs the reference `bcos` package (pip install bcos einops)")

ROOT = Path(__file__).resolve().parents[1]

# (N, C, H, W, O, kernel, stride, padding, dilation, groups, max_out, b)
GEOMETRIES = [
    (2, 4, 7, 6, 5, 3, 1, 1, 1, 1, 1, 2.0),  # the ResNet 3x3
    (2, 6, 12, 10, 4, 7, 2, 3, 1, 1, 1, 2.0),  # the stem
    (3, 5, 6, 6, 3, 1, 2, 0, 1, 1, 1, 2.0),  # 1x1 strided downsample
    (1, 4, 9, 8, 6, (3, 2), (2, 1), (1, 2), (2, 1), 2, 2, 2.5),  # groups, max-out, dilation, b != 2
    (2, 3, 5, 5, 2, 3, 1, 0, 1, 1, 3, 1.0),  # b = 1: plain linear + max-out
    (1, 2, 4, 4, 2, 2, 2, 1, 1, 1, 1, 3.0),
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 2.0),  # a single element
    (0, 3, 5, 5, 2, 3, 1, 1, 1, 1, 1, 2.0),  # an empty batch
]


def _inputs(geometry, gen, dtype=torch.float64):
    n, c, h, w, o, k, s, p, d, g, m, b = geometry
    k = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(o * m, c // g, *k, generator=gen, dtype=dtype)
    weight = weight / torch.linalg.vector_norm(weight, dim=(1, 2, 3), keepdim=True)
    return x, weight, dict(stride=s, padding=p, dilation=d, groups=g, max_out=m, b=b)


def _op(x, weight, stride, padding, dilation, groups, max_out, b, explain=False):
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    return torch.ops.kdfast.bcos_conv2d(x, weight, pair(stride), pair(padding), pair(dilation), groups, max_out, b,
                                        explain)


def assert_rel_close(actual, expected, tol, name=""):
    """max |actual − expected| <= tol · max |expected| (B-cos activations shrink with depth, so absolute
    tolerances would be vacuous), with a non-trivial expected value."""
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * max(scale, 1e-300), (name, err, scale)


# ----------------------------------------------------------------------------------------------- input encoding


def test_encode_input_appends_the_complement():
    x = torch.rand(2, 3, 4, 5)
    enc = kb.encode_input(x)
    assert enc.shape == (2, 6, 4, 5)
    assert torch.equal(enc[:, :3], x) and torch.equal(enc[:, 3:], 1 - x)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        kb.encode_input(torch.rand(2, 1, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        kb.encode_input(torch.ones(1, 3, 2, 2, dtype=torch.uint8))


# ----------------------------------------------------------------------------------------- the op's definition


def _direct_bcos_conv(x, weight, stride, padding, dilation, groups, max_out, b):
    """Patch by patch with unfold, independent of the reference's conv-of-x² formulation."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (N, C·kh·kw, L)
    ho = (h + 2 * _p(padding)[0] - _p(dilation)[0] * (kh - 1) - 1) // _p(stride)[0] + 1
    wo = (w + 2 * _p(padding)[1] - _p(dilation)[1] * (kw - 1) - 1) // _p(stride)[1] + 1
    cols = cols.unflatten(1, (groups, c // groups * kh * kw))  # (N, G, patch, L)
    filters = weight.flatten(1).unflatten(0, (groups, -1))  # (G, O·M/G, patch)
    linear = torch.einsum("ngpl,gop->ngol", cols, filters).flatten(1, 2)  # (N, O·M, L)
    norm = (cols.pow(2).sum(2) + 1e-6).sqrt()  # (N, G, L)
    out = linear.unflatten(1, (-1, max_out)).max(2).values
    norm_o = norm.repeat_interleave(out.shape[1] // groups, dim=1)
    if b == 2:
        result = out.abs() / norm_o * out
    else:
        result = ((out / norm_o).abs() + 1e-6) ** (b - 1) * out
    shape = lambda t: t.reshape(n, t.shape[1], ho, wo)  # noqa: E731
    return shape(result), shape(linear), shape(norm)


def _p(v):
    return v if isinstance(v, tuple) else (v, v)


def test_reference_matches_patchwise_definition(gen):
    for geometry in GEOMETRIES:
        x, weight, kw = _inputs(geometry, gen)
        for got, want, name in zip(ops.bcos_conv2d_reference(x, weight, **kw), _direct_bcos_conv(x, weight, **kw),
                                   ("result", "linear", "norm")):
            assert_rel_close(got, want, 1e-12, (geometry, name))


def test_fused_op_matches_reference_float64(gen):
    for geometry in GEOMETRIES:
        x, weight, kw = _inputs(geometry, gen)
        for got, want, name in zip(_op(x, weight, **kw), ops.bcos_conv2d_reference(x, weight, **kw),
                                   ("result", "linear", "norm")):
            assert got.dtype == torch.float64
            assert_rel_close(got, want, 1e-12, (geometry, name))


def test_fused_op_float32_and_edge_values(gen):
    x, weight, kw = _inputs(GEOMETRIES[3], gen)
    want = ops.bcos_conv2d_reference(x, weight, **kw)
    got = _op(x.float(), weight.float(), **kw)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        assert_rel_close(g.double(), w, 1e-5)
    # Zero input: norm = sqrt(1e-6), result 0. Constant input: every interior patch norm is equal.
    zero = _op(torch.zeros(1, 4, 9, 8, dtype=torch.float64), weight, **kw)
    assert torch.all(zero[0] == 0) and torch.allclose(zero[2], torch.full_like(zero[2], 1e-3))
    const = torch.full((1, 2, 6, 6), 0.5, dtype=torch.float64)
    _, _, norm = _op(const, torch.ones(1, 2, 3, 3, dtype=torch.float64) / math.sqrt(18), 1, 0, 1, 1, 1, 2.0)
    assert torch.allclose(norm, torch.full_like(norm, math.sqrt(18 * 0.25 + 1e-6)))
    # Max-out ties: two identical units give that unit's value. Bit for bit only where the convolution is
    # exact (small integers): the backend's convolution (oneDNN) may round two identical filters differently
    # when they are different output channels (it does for some float inputs, depending on the thread count).
    w_tied = torch.cat([weight[:1], weight[:1]])
    tied = _op(x[:, :2], w_tied[:, :2], 1, 0, 1, 1, 2, 2.0)[0]
    single = _op(x[:, :2], w_tied[:1, :2], 1, 0, 1, 1, 1, 2.0)[0]
    torch.testing.assert_close(tied, single, rtol=1e-13, atol=1e-15)
    x_int = torch.randint(-3, 4, x[:, :2].shape, generator=gen).double()
    w_int = torch.randint(-3, 4, (1, *w_tied.shape[1:]), generator=gen).double().expand(2, -1, -1, -1).contiguous()
    tied = _op(x_int, w_int[:, :2], 1, 0, 1, 1, 2, 2.0)[0]
    single = _op(x_int, w_int[:1, :2], 1, 0, 1, 1, 1, 2.0)[0]
    assert torch.equal(tied, single)
    # A NaN input reaches the outputs of the patches that cover it (and no others).
    x, weight, kw = _inputs(GEOMETRIES[0], gen)
    x[0, 0, 3, 3] = float("nan")
    nan_out = torch.isnan(_op(x, weight, **kw)[0])
    assert nan_out[0, :, 2:5, 2:5].all() and nan_out.sum() == weight.shape[0] * 9


def test_half_and_bfloat16_inputs_follow_float32(gen):
    x, weight, kw = _inputs(GEOMETRIES[0], gen, torch.float32)
    want = _op(x, weight, **kw)[0]
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 3e-3)):
        got = _op(x.to(dtype), weight.to(dtype), **kw)[0]
        assert got.dtype == dtype
        assert_rel_close(got.float(), want, tol, dtype)


# Small enough for numerical Jacobians: (N, C, H, W, O, kernel, stride, padding, dilation, groups, max_out, b).
GRAD_GEOMETRIES = [
    (1, 2, 4, 4, 2, 3, 1, 1, 1, 1, 1, 2.0),
    (1, 4, 5, 4, 2, (3, 2), (2, 1), (1, 2), (2, 1), 2, 2, 2.5),
    (2, 2, 3, 3, 1, 2, 2, 1, 1, 1, 1, 3.0),
]


@pytest.mark.parametrize("geometry", GRAD_GEOMETRIES)
def test_fused_op_gradcheck(gen, geometry):
    x, weight, kw = _inputs(geometry, gen)
    inputs = (x.requires_grad_(True), weight.requires_grad_(True))
    op = lambda x, weight: _op(x, weight, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(op, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(op, inputs, fast_mode=True)


@pytest.mark.parametrize("geometry", GRAD_GEOMETRIES)
@pytest.mark.parametrize("explain", [False, True])
def test_fused_op_gradients_equal_reference_autograd(gen, geometry, explain):
    """First and second order, explanation mode included (where gradcheck does not apply: the scale is
    deliberately a constant for autograd there, as in the bcos package)."""
    x, weight, kw = _inputs(geometry, gen)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    results = []
    for fn in (_op, ops.bcos_conv2d_reference):
        outputs = fn(x, weight, **kw, explain=explain)
        gen_state = gen.get_state()
        cot = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in outputs]
        grads = torch.autograd.grad(outputs, (x, weight), cot, create_graph=True)
        probe = [torch.randn(g.shape, generator=gen, dtype=g.dtype) for g in grads]
        gen.set_state(gen_state)
        second = torch.autograd.grad(sum((g * p).sum() for g, p in zip(grads, probe)), (x, weight))
        results.append(grads + second)
    for got, want in zip(*results):
        assert_rel_close(got, want, 1e-11)


def test_explain_mode_treats_the_scale_as_constant(gen):
    x, weight, kw = _inputs(GEOMETRIES[0], gen)
    x.requires_grad_(True)
    result = _op(x, weight, **kw, explain=True)[0]
    (grad,) = torch.autograd.grad(result.sum(), x)
    linear = F.conv2d(x, weight, None, 1, 1)
    scale = ops.dynamic_scale(linear, ops.patch_norms(x, (3, 3), 1, 1, 1, 1), 2.0).detach()
    (want,) = torch.autograd.grad((scale * linear).sum(), x)
    assert_rel_close(grad, want, 1e-12)
    assert not torch.allclose(grad, torch.autograd.grad(_op(x, weight, **kw)[0].sum(), x)[0])


def test_opcheck(gen):
    x, weight, _ = _inputs(GRAD_GEOMETRIES[1], gen, torch.float32)
    args = (x.requires_grad_(), weight.requires_grad_(), [2, 1], [1, 2], [2, 1], 2, 2, 2.5, False)
    torch.library.opcheck(torch.ops.kdfast.bcos_conv2d.default, args)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=torch.ones(2, 3, 4)), ValueError, r"input must be \(N, C, H, W\)"),
        (dict(weight=torch.ones(4, 3, 3)), ValueError, r"weight must be"),
        (dict(x=torch.ones(1, 4, 5, 5)), ValueError, "channels"),
        (dict(max_out=3), ValueError, "max_out=3"),
        (dict(b=0.5), ValueError, "b must be >= 1"),
        (dict(x=torch.ones(1, 3, 5, 5, dtype=torch.int64)), TypeError, "floating"),
        (dict(stride=(1, 2, 3)), ValueError, "stride"),
        (dict(groups=2, weight=torch.ones(3, 1, 3, 3), x=torch.ones(1, 2, 5, 5)), ValueError, "divisible by groups"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = dict(x=torch.ones(1, 3, 5, 5), weight=torch.ones(4, 3, 3, 3), stride=1, max_out=1, b=2.0, groups=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ops.bcos_conv2d(args["x"], args["weight"], args["stride"], 1, 1, args["groups"], args["max_out"], args["b"])


def test_triton_kernel_under_interpreter():
    """The CUDA path's Triton kernel, run on CPU tensors by Triton's interpreter (set before triton imports)."""
    script = r"""
import triton_gpu_scalars  # Python float arguments arrive as float32, as on a GPU
import torch
from kdfast.ops import bcos_conv as ops
from kdfast.ops.triton.bcos_conv import bcos_conv2d_triton
gen = torch.Generator().manual_seed(7)
cases = [  # (N, C, H, W, O, kernel, stride, padding, dilation, groups, max_out, b)
    (2, 20, 7, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, 2.0),   # > BLOCK_C channels
    (1, 4, 9, 8, 6, (3, 2), (2, 1), (1, 2), (2, 1), 2, 2, 2.5),
    (1, 6, 8, 8, 3, (7, 7), (2, 2), (3, 3), (1, 1), 1, 1, 2.0),  # the stem
    (1, 2, 9, 8, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, 2.0),  # > BLOCK_P positions
    (2, 3, 5, 5, 40, (1, 1), (1, 1), (0, 0), (1, 1), 1, 1, 3.0),   # > BLOCK_O channels
    (1, 3, 6, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, 2.3),    # b - 1 is no float32 number
]
for dtype, tol, todo in ((torch.float64, 1e-12, cases), (torch.float32, 1e-5, cases[:2])):
    for n, c, h, w, o, k, s, p, d, g, m, b in todo:
        x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
        weight = torch.randn(o * m, c // g, *k, generator=gen, dtype=torch.float64)
        weight = weight / torch.linalg.vector_norm(weight, dim=(1, 2, 3), keepdim=True)
        want = ops.bcos_conv2d_reference(x, weight, s, p, d, g, m, b)
        got = bcos_conv2d_triton(x.to(dtype), weight.to(dtype), s, p, d, g, m, b)
        for name, gt, wt in zip(("result", "linear", "norm"), got, want):
            assert gt.dtype == dtype and gt.shape == wt.shape, (name, gt.shape, wt.shape)
            err = (gt.double() - wt).abs().max().item()
            assert err <= tol * wt.abs().max().item(), (dtype, (n, c, h, w, o, k), name, err)
print("ok")
"""
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


@requires_cuda
def test_cuda_op_matches_cpu(gen):
    for geometry in GEOMETRIES:
        x, weight, kw = _inputs(geometry, gen)
        want = _op(x, weight, **kw)
        got = _op(x.cuda(), weight.cuda(), **kw)
        for g, w in zip(got, want):
            assert_rel_close(g.cpu(), w, 1e-10)
    x, weight, kw = _inputs(GEOMETRIES[3], gen)
    x, weight = x.cuda().requires_grad_(), weight.cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: _op(x, w, **kw), (x, weight))


# ----------------------------------------------------------------------------------- layers vs the bcos package


def _copy_weights(ours, theirs):
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours


def _assert_layer_matches(theirs, ours, x, gen, forward_rtol, grad_rtol):
    """Outputs and gradients (w.r.t. the input and the filters) agree in normal and in explanation mode."""
    for explain in (False, True):
        theirs.set_explanation_mode(explain)
        ours.set_explanation_mode(explain)
        want, got = theirs(x), ours(x)
        assert_rel_close(got, want, forward_rtol, ("forward", explain))
        cot = torch.randn(want.shape, generator=gen, dtype=torch.float64)
        g_want = torch.autograd.grad(want, (x, theirs.linear.weight), cot)
        g_got = torch.autograd.grad(got, (x, ours.linear.weight), cot)
        for g, w in zip(g_got, g_want):
            assert_rel_close(g, w, grad_rtol, ("grad", explain))


@requires_bcos
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "conf",
    [
        dict(in_channels=6, out_channels=5, kernel_size=3, padding=1),
        dict(in_channels=6, out_channels=4, kernel_size=7, stride=2, padding=3),
        dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2, b=2.5, max_out=2),
        dict(in_channels=4, out_channels=3, kernel_size=3, padding=2, dilation=2, b=3),  # (package: max_out=1 only)
    ],
)
def test_bcos_conv2d_matches_package(gen, fused, conf):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns that dilation > 1 is slow
        theirs = PkgConv2d(**conf).double()
    ours = _copy_weights(kb.BcosConv2d(**conf, fused=fused).double(), theirs)
    x = torch.randn(2, conf["in_channels"], 9, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    _assert_layer_matches(theirs, ours, x, gen, forward_rtol=1e-12, grad_rtol=1e-10)


@requires_bcos
@pytest.mark.parametrize("conf", [dict(b=2), dict(b=3, max_out=2), dict(b=1.5)])
def test_bcos_linear_matches_package(gen, conf):
    theirs = PkgLinear(12, 5, **conf).double()
    ours = _copy_weights(kb.BcosLinear(12, 5, **conf).double(), theirs)
    x = torch.randn(3, 4, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    _assert_layer_matches(theirs, ours, x, gen, forward_rtol=1e-13, grad_rtol=1e-12)


@requires_bcos
def test_uncentered_batchnorm_matches_package(gen):
    theirs = norms.NoBias(norms.BatchNormUncentered2d)(5).double()
    ours = _copy_weights(kb.BatchNormUncentered2d(5).double(), theirs)
    assert ours.bias is None and "bias" not in ours.state_dict()
    with torch.no_grad():
        for m in (theirs, ours):
            m.weight.copy_(torch.linspace(0.5, 2.0, 5))
    x = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True) + 1.0
    for step in range(2):  # training mode: batch statistics and the running estimate
        for explain in (False, True):
            theirs.set_explanation_mode(explain)
            ours.set_explanation_mode(explain)
            want, got = theirs(x), ours(x)
            assert_rel_close(got, want, 1e-13)
            cot = torch.randn(want.shape, generator=gen, dtype=torch.float64)
            assert_rel_close(torch.autograd.grad(got, x, cot)[0], torch.autograd.grad(want, x, cot)[0], 1e-12)
    assert torch.allclose(ours.running_var, theirs.running_var, rtol=1e-13)
    assert int(ours.num_batches_tracked) == 4
    theirs.eval(), ours.eval()
    assert_rel_close(ours(x), theirs(x), 1e-13)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ours(torch.ones(2, 5))


# ---------------------------------------------------------------------------------------- models vs the package


def _package_resnet(arch, num_classes):
    return getattr(pkg_resnet, arch)(
        num_classes=num_classes,
        inplanes=8,
        norm_layer=norms.NoBias(norms.BatchNormUncentered2d),
        conv_layer=partial(PkgConv2d, b=2, max_out=1),
    )


def _randomise_norms(model, gen):
    """Trained-like BN statistics and scales (a fresh model's are all ones)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.2)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=m.weight.dtype) + 0.5)
    return model


@requires_bcos
@pytest.mark.parametrize("arch, ours", [("resnet18", kb.bcos_resnet18), ("resnet34", kb.bcos_resnet34),
                                        ("resnet50", kb.bcos_resnet50)])
def test_resnets_match_package(gen, arch, ours):
    theirs = _randomise_norms(_package_resnet(arch, 7), gen).double().eval()
    model = _copy_weights(ours(7, inplanes=8), theirs).double().eval()
    x = kb.encode_input(torch.rand(3, 3, 48, 48, generator=gen, dtype=torch.float64))
    bias = -math.log(6)
    assert model.logit_layer.logit_bias == pytest.approx(bias)
    assert_rel_close(model(x) - bias, theirs(x) - bias, 1e-10, "logits")
    classes = torch.tensor([0, 6, 3])
    expl = kb.explain_batch(model, x, classes)
    for i in range(3):
        ref = theirs.explain(x[i : i + 1].clone().requires_grad_(True), idx=int(classes[i]))
        assert_rel_close(expl.weights[i], ref["dynamic_linear_weights"][0], 1e-10, ("W", i))
        assert_rel_close(expl.contributions[i], ref["contribution_map"][0], 1e-10, ("contributions", i))
    # Dynamic linearity: logit − bias == Σ W(x)·x exactly (up to float64 rounding).
    picked = expl.logits.gather(1, classes[:, None])[:, 0] - bias
    assert_rel_close(expl.contributions.sum((1, 2)), picked, 1e-10, "completeness")


@requires_bcos
def test_vit_tiny_matches_package(gen):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns when its ViT is built outside its entrypoints
        vit = pkg_vit.simple_vit_ti_patch16_224(
            num_classes=5,
            channels=6,
            linear_layer=partial(PkgLinear, b=2, max_out=1),
            norm_layer=norms.NoBias(PkgLayerNorm),
            act_layer=nn.Identity,
        )
    theirs = BcosSequential(vit, LogitLayer(logit_bias=math.log(1 / 4))).double().eval()
    model = _copy_weights(bcos_vit_tiny(5), theirs).double().eval()
    x = kb.encode_input(torch.rand(2, 3, 32, 48, generator=gen, dtype=torch.float64))
    bias = -math.log(4)
    assert_rel_close(model(x) - bias, theirs(x) - bias, 1e-10, "logits")
    expl = kb.explain_batch(model, x, torch.tensor([1, 4]))
    for i, c in enumerate((1, 4)):
        ref = theirs.explain(x[i : i + 1].clone().requires_grad_(True), idx=c)
        assert_rel_close(expl.weights[i], ref["dynamic_linear_weights"][0], 1e-9, ("W", i))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.rand(1, 6, 30, 32, dtype=torch.float64))


# ------------------------------------------------------------------------------------------ batched explanations


def _tiny_resnet(gen, **kwargs):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    return _randomise_norms(kb.bcos_resnet18(6, inplanes=4, small_inputs=True, **kwargs), gen).double().eval()


def test_explain_batch_equals_per_image_and_autograd(gen):
    model = _tiny_resnet(gen)
    x = kb.encode_input(torch.rand(4, 3, 16, 16, generator=gen, dtype=torch.float64))
    classes = torch.tensor([5, 0, 5, 2])
    expl = kb.explain_batch(model, x, classes)
    assert expl.weights.shape == x.shape and expl.contributions.shape == (4, 16, 16) and expl.logits.shape == (4, 6)
    assert_rel_close(expl.logits, model(x), 1e-14)  # explanation mode changes no forward value
    for i in range(4):
        single = kb.explain_batch(model, x[i : i + 1], classes[i : i + 1])
        assert_rel_close(expl.weights[i], single.weights[0], 1e-12, ("batched vs single", i))
        # W(x) is the gradient of the explained logit w.r.t. the input in explanation mode.
        xi = x[i : i + 1].clone().requires_grad_(True)
        with kb.explanation_mode(model):
            (grad,) = torch.autograd.grad(model(xi)[0, classes[i]], xi)
        assert_rel_close(expl.weights[i], grad[0], 1e-12, ("autograd", i))
    # classes=None explains each sample's prediction.
    predicted = kb.explain_batch(model, x)
    top = expl.logits.argmax(1)
    assert_rel_close(predicted.weights, kb.explain_batch(model, x, top).weights, 0.0)


def test_explain_batch_fused_matches_plain_path(gen):
    model = _tiny_resnet(gen)
    plain = _tiny_resnet(gen, fused=False)
    plain.load_state_dict(model.state_dict())
    x = kb.encode_input(torch.rand(3, 3, 12, 12, generator=gen, dtype=torch.float64))
    classes = torch.tensor([1, 2, 3])
    a, b = kb.explain_batch(model, x, classes), kb.explain_batch(plain, x, classes)
    for got, want in zip(a, b):
        assert_rel_close(got, want, 1e-12)


def test_explanations_are_differentiable_for_e2kd(gen):
    """create_graph=True: ∂(W(x)·r)/∂θ through the fused op's backward equals the plain-PyTorch path's."""
    model = _tiny_resnet(gen)
    plain = _tiny_resnet(gen, fused=False)
    plain.load_state_dict(model.state_dict())
    x = kb.encode_input(torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64))
    r = torch.randn(2, 6, 8, 8, generator=gen, dtype=torch.float64)
    grads = []
    for m in (model, plain):
        logits, weights, _ = kb.explain_batch(m, x, torch.tensor([0, 3]), create_graph=True)
        loss = (weights * r).sum() + logits.square().sum()  # an e2KD-like loss on the same pass
        grads.append(torch.autograd.grad(loss, [p for p in m.parameters()]))
    assert not kb.explain_batch(model, x).logits.requires_grad
    for got, want in zip(*grads):
        assert_rel_close(got, want, 1e-10)


def test_explain_batch_in_training_mode_keeps_samples_independent(gen):
    model = _tiny_resnet(gen).train()
    x = kb.encode_input(torch.rand(3, 3, 8, 8, generator=gen, dtype=torch.float64)).requires_grad_(True)
    classes = torch.tensor([1, 1, 4])
    expl = kb.explain_batch(model, x, classes)
    with kb.explanation_mode(model):
        logits = model(x)
    for i in range(3):  # the full Jacobian row of sample i's logit: zero on every other sample
        (grad,) = torch.autograd.grad(logits[i, classes[i]], x, retain_graph=True)
        assert_rel_close(expl.weights[i], grad[i], 1e-12)
        assert torch.all(grad[torch.arange(3) != i] == 0)


def test_explain_batch_rejects_bad_input(gen):
    model = _tiny_resnet(gen)
    x = kb.encode_input(torch.rand(2, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(2,\) integer"):
        kb.explain_batch(model, x, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        kb.explain_batch(model, x, torch.tensor([1, 6]))
    with pytest.raises(ValueError, match="integer"):
        kb.explain_batch(model, x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        kb.explain_batch(model, x[0])
    coupled = nn.Sequential(nn.Conv2d(6, 3, 1), nn.BatchNorm2d(3), nn.Flatten(), nn.LazyLinear(2)).double()
    with pytest.raises(ValueError, match="'1' .*BatchNorm2d.* training mode"):
        kb.explain_batch(coupled, x)


def test_explanation_mode_restores_previous_state(gen):
    model = _tiny_resnet(gen)
    layer = model.layer1[0].conv1
    layer.set_explanation_mode(True)
    with kb.explanation_mode(model):
        assert all(m.is_in_explanation_mode for m in model.modules() if isinstance(m, kb.Detachable))
    assert layer.is_in_explanation_mode and not model.conv1.is_in_explanation_mode
    with pytest.raises(RuntimeError), kb.explanation_mode(model):
        raise RuntimeError("inside")
    assert not model.conv1.is_in_explanation_mode


def test_fused_layer_under_cpu_autocast(gen):
    """Under autocast the op runs in the autocast dtype, like a convolution would."""
    layer = kb.BcosConv2d(6, 8, 3, padding=1)
    x = torch.randn(2, 6, 8, 8, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.bfloat16
    w = layer.linear.weight.detach()
    w = w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)
    want = ops.bcos_conv2d_reference(x.bfloat16().double(), w.bfloat16().double(), 1, 1)[0]
    assert_rel_close(got.double(), want, 2e-2)


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        kb.bcos_resnet18(1)
    assert kb.bcos_resnet18(1, logit_bias=0.0).logit_layer.logit_bias == 0.0
    with pytest.raises(ValueError, match="max_out"):
        kb.BcosConv2d(3, 4, max_out=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        bcos_vit_tiny(3, dim=6, heads=3, depth=1)(torch.rand(1, 6, 16, 16))
