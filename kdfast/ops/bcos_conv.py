"""B-cos convolution (Böhle et al., B-cos networks v2) as one op: ŵᵀx, max-out and the dynamic scaling.

For unit-norm filters ŵ (the module normalises them), every output position with input patch x gets

    out    = max over the max_out units of ŵᵀx                    (the linear part; no bias)
    norm   = sqrt(Σ_patch x² + 1e-6)                             (all channels of the group × the kernel window)
    result = |out| / norm · out                      if b == 2
           = (|out / norm| + 1e-6)^(b-1) · out       otherwise   (the bcos package's exact arithmetic)

`torch.ops.kdfast.bcos_conv2d` computes ŵᵀx with the backend's convolution (oneDNN / cuDNN) and the rest in ONE
fused pass (C++ on the CPU, Triton on CUDA) instead of a second full convolution of x² plus a chain of
elementwise ops. It returns (result, linear, norm); linear (pre-max-out ŵᵀx) and norm are what the backward
needs. The backward is plain differentiable PyTorch, so double backward (e2KD trains on W(x) = ∂logit/∂x)
works. With `explain=True` (explanation mode) the dynamic scale is a constant for autograd at every order,
as in the bcos package; the forward values do not change.
"""
import torch
import torch.nn.functional as F

from kdfast import _extension

NORM_EPS = 1e-6  # sqrt(Σ x² + 1e-6), the bcos package's stabiliser
COS_EPS = 1e-6  # (|cos| + 1e-6)^(b-1) for b != 2, as in the bcos package


def _pair(value, name):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check(input, weight, stride, padding, dilation, groups, max_out, b):
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dim() != 4:
            layout = "(N, C, H, W)" if name == "input" else "(O*max_out, C/groups, kH, kW)"
            raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")
    if input.device != weight.device:
        raise ValueError(f"input is on {input.device} but weight is on {weight.device}")
    if not isinstance(groups, int) or groups < 1 or input.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"input has {input.shape[1]} channels; weight {tuple(weight.shape)} with groups={groups} expects "
            f"{weight.shape[1]} x groups"
        )
    if not isinstance(max_out, int) or max_out < 1 or weight.shape[0] % max_out:
        raise ValueError(f"weight has {weight.shape[0]} filters, which is not a multiple of max_out={max_out}")
    if (weight.shape[0] // max_out) % groups:
        raise ValueError(f"{weight.shape[0] // max_out} output channels are not divisible by groups={groups}")
    if not float(b) >= 1.0:
        raise ValueError(f"b must be >= 1 (b = 1 is a plain linear layer), got {b}")
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    return stride, padding, dilation


def patch_norms(input, kernel_size, stride, padding, dilation, groups):
    """sqrt(Σ x² + 1e-6) over every conv patch (the group's channels × the kernel window): (N, groups, Ho, Wo).
    Written as the definition: a convolution of x² with a ones kernel."""
    ones = input.new_ones(groups, input.shape[1] // groups, *kernel_size)
    return (F.conv2d(input * input, ones, None, stride, padding, dilation, groups) + NORM_EPS).sqrt()


def dynamic_scale(out, norm, b):
    """|cos|^(b-1) of the B-cos transform (with the bcos package's special case b == 2: |out| / norm)."""
    if b == 2:
        return out.abs() / norm
    return ((out / norm).abs() + COS_EPS).pow(b - 1)


def max_out_units(linear, max_out):
    """Max over groups of `max_out` consecutive channels (the bcos package's ordering): (values, indices or None)."""
    if max_out == 1:
        return linear, None
    values, indices = linear.unflatten(1, (linear.shape[1] // max_out, max_out)).max(dim=2)
    return values, indices


def _per_channel(norm, out_channels):
    return norm.repeat_interleave(out_channels // norm.shape[1], dim=1)


def bcos_conv2d_reference(input, weight, stride=1, padding=0, dilation=1, groups=1, max_out=1, b=2.0, explain=False):
    """Plain differentiable PyTorch, the bcos package's definition: (result, linear, norm) as the op returns."""
    stride, padding, dilation = _check(input, weight, stride, padding, dilation, groups, max_out, b)
    linear = F.conv2d(input, weight, None, stride, padding, dilation, groups)
    out, _ = max_out_units(linear, max_out)
    norm = patch_norms(input, weight.shape[2:], stride, padding, dilation, groups)
    norm_o = _per_channel(norm, out.shape[1])
    scale = dynamic_scale(out.detach(), norm_o.detach(), b) if explain else dynamic_scale(out, norm_o, b)
    return scale * out, linear, norm


def _autocast(input, weight):
    """Casts to the autocast dtype, as autocast would for a convolution (the op itself has no autocast rule)."""
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return input.to(dtype), weight.to(dtype)
    return input, weight


def bcos_conv2d(input, weight, stride=1, padding=0, dilation=1, groups=1, max_out=1, b=2.0, explain=False):
    """B-cos convolution of `input` (N, C, H, W) with unit-norm `weight` (O·max_out, C/groups, kH, kW):
    the (N, O, Ho, Wo) result, via the fused op. Differentiable (twice)."""
    stride, padding, dilation = _check(input, weight, stride, padding, dilation, groups, max_out, b)
    _extension.load()
    if not _op_built():
        raise RuntimeError(
            "the loaded kdfast._C predates torch.ops.kdfast.bcos_conv2d; rebuild it with "
            "`pip install --no-build-isolation -e .` (or use the plain-PyTorch path, BcosConv2d(fused=False))"
        )
    input, weight = _autocast(input, weight)
    out, _, _ = torch.ops.kdfast.bcos_conv2d(
        input, weight, list(stride), list(padding), list(dilation), groups, max_out, float(b), bool(explain)
    )
    return out


def _scale_partials(out, norm_o, b):
    """∂result/∂out and ∂result/∂norm of result = s(out, norm)·out."""
    if b == 2:
        return 2 * out.abs() / norm_o, -out * out.abs() / (norm_o * norm_o)
    cos = out / norm_o
    a = cos.abs() + COS_EPS
    # d s/d cos = (b-1)·a^(b-2)·sign(cos), so out·ds/dout = (b-1)·a^(b-2)·|cos|.
    k = (b - 1) * a.pow(b - 2) * cos.abs()
    return a.pow(b - 1) + k, -k * cos


def _setup_context(ctx, inputs, output):
    input, weight, stride, padding, dilation, groups, max_out, b, explain = inputs
    _, linear, norm = output
    ctx.save_for_backward(input, weight, linear, norm)
    ctx.geometry = (list(stride), list(padding), list(dilation), groups)
    ctx.max_out, ctx.b, ctx.explain = max_out, b, explain


def _backward(ctx, grad_result, grad_linear, grad_norm):
    input, weight, linear, norm = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.geometry
    out, indices = max_out_units(linear, ctx.max_out)
    norm_o = _per_channel(norm, out.shape[1])
    grad_lin = grad_linear
    if grad_result is not None:
        if ctx.explain:
            grad_out = grad_result * dynamic_scale(out.detach(), norm_o.detach(), ctx.b)
        else:
            d_out, d_norm = _scale_partials(out, norm_o, ctx.b)
            grad_out = grad_result * d_out
            via_scale = (grad_result * d_norm).unflatten(1, (groups, -1)).sum(2)
            grad_norm = via_scale if grad_norm is None else grad_norm + via_scale
        if indices is not None:  # route each max-out gradient to its winning unit
            spread = grad_out.new_zeros(*out.shape[:2], ctx.max_out, *out.shape[2:])
            grad_out = spread.scatter(2, indices.unsqueeze(2), grad_out.unsqueeze(2)).flatten(1, 2)
        grad_lin = grad_out if grad_lin is None else grad_lin + grad_out

    need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_input = grad_weight = None
    if grad_lin is not None:
        grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_lin, input, weight, None, stride, padding, dilation, False, [0, 0], groups,
            [need_input, need_weight, False],
        )
    if grad_norm is not None and need_input:
        # norm = sqrt(S + eps), S = box sum of x²: ∂L/∂x = x · boxᵀ(∂L/∂norm / norm), boxᵀ being the
        # transposed convolution with a ones kernel, shared by every channel of a group.
        ones = norm.new_ones(groups, 1, *weight.shape[2:])
        spread = torch.nn.grad.conv2d_input(
            (input.shape[0], groups, *input.shape[2:]), ones, grad_norm / norm, stride, padding, dilation, groups
        )
        via_norm = (input.unflatten(1, (groups, -1)) * spread.unsqueeze(2)).flatten(1, 2)
        grad_input = via_norm if grad_input is None else grad_input + via_norm
    return grad_input, grad_weight, None, None, None, None, None, None, None


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _bcos_conv2d_cuda(input, weight, stride, padding, dilation, groups, max_out, b, explain):
    from kdfast.ops.triton.bcos_conv import bcos_conv2d_triton

    return bcos_conv2d_triton(input, weight, stride, padding, dilation, groups, max_out, b)


def _op_built():
    """The op exists in the loaded kdfast._C (an extension built before it was added lacks it)."""
    return _extension.available() and hasattr(torch.ops.kdfast, "bcos_conv2d")


if _op_built():

    @torch.library.register_fake("kdfast::bcos_conv2d")
    def _bcos_conv2d_fake(input, weight, stride, padding, dilation, groups, max_out, b, explain):
        n, _, h, w = input.shape
        kh, kw = weight.shape[2:]
        ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
        wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
        return (
            input.new_empty(n, weight.shape[0] // max_out, ho, wo),
            input.new_empty(n, weight.shape[0], ho, wo),
            input.new_empty(n, groups, ho, wo),
        )

    torch.library.register_autograd("kdfast::bcos_conv2d", _backward, setup_context=_setup_context)
    torch.library.register_kernel("kdfast::bcos_conv2d", "cuda", _bcos_conv2d_cuda)
