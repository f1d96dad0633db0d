"""Triton path of torch.ops.kdfast.bcos_conv2d (registered for CUDA in kdfast/ops/bcos_conv.py).

ŵᵀx is the backend's convolution (cuDNN); then two kernels do the rest. The first reads x once and writes
Σ_c x² per (sample, group, pixel) (C/groups times smaller than x). In the epilogue a program owns BLOCK_P
output positions of one (sample, group): the patch norm is the KH x KW box sum of those channel sums (kept in
registers and written once), then it walks the group's output channels BLOCK_O at a time, reading the
max_out linear units, taking their max and applying the B-cos scaling. (The first version summed x² over
KH·KW·⌈C/16⌉ tiles per position, re-reading x KH·KW times.) Arithmetic in float32 (float64 for
float64 inputs). Runs on CPU tensors under TRITON_INTERPRET=1, which is how the tests check it without a GPU.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kdfast.ops.bcos_conv import COS_EPS, NORM_EPS
from kdfast.ops.triton._launch import MAX_GRID_YZ, device_of, kernel_scalar, scalars

_BLOCK_C = 16
_BLOCK_PIXELS = 128
_BLOCK_O = 32


@triton.jit
def _channel_square_sum_kernel(x_ptr, sq_ptr, HW, Cg, ng0,
                               BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """sq[(sample, group), pixel] = Σ over the group's channels of x²: the patch norm's one read of x."""
    ng = ng0 + tl.program_id(1).to(tl.int64)  # sample * G + group
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = pix < HW
    x_group = x_ptr + ng * Cg * HW
    offs_c = tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK], ACC)
    for c0 in range(0, Cg, BLOCK_C):
        c = c0 + offs_c
        v = tl.load(x_group + c[:, None].to(tl.int64) * HW + pix[None, :], mask=(c < Cg)[:, None] & ok[None, :],
                    other=0.0).to(ACC)
        acc += tl.sum(v * v, axis=0)
    tl.store(sq_ptr + ng * HW + pix, acc, mask=ok)


@triton.jit
def _bcos_epilogue_kernel(sq_ptr, lin_ptr, out_ptr, norm_ptr, H, W, Ho, Wo, G, Og, ng0,
                          stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, b_minus_1_arg, norm_eps_arg, cos_eps_arg,
                          KH: tl.constexpr, KW: tl.constexpr, MAX_OUT: tl.constexpr, B_IS_TWO: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, ACC: tl.constexpr,
                          SCALARS_IN_MEMORY: tl.constexpr):
    b_minus_1 = kernel_scalar(b_minus_1_arg, SCALARS_IN_MEMORY)
    norm_eps = kernel_scalar(norm_eps_arg, SCALARS_IN_MEMORY)
    cos_eps = kernel_scalar(cos_eps_arg, SCALARS_IN_MEMORY)
    # Positions on grid axis 0 (up to 2^31 - 1 programs), (sample, group) on axis 1 from ng0 on.
    ng = ng0 + tl.program_id(1).to(tl.int64)  # sample * G + group
    n = ng // G
    g = ng % G
    P = Ho * Wo
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    ho = p // Wo
    wo = p % Wo

    # Patch norm: the KH x KW (dilated) box sum of the channel sums of x², zero padding outside the image.
    sq_group = sq_ptr + ng * H * W
    acc = tl.zeros([BLOCK_P], ACC)
    for kh in tl.static_range(KH):
        ih = ho * stride_h - pad_h + kh * dil_h
        for kw in tl.static_range(KW):
            iw = wo * stride_w - pad_w + kw * dil_w
            inside = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            acc += tl.load(sq_group + ih * W + iw, mask=inside, other=0.0)
    if ACC == tl.float32:
        norm = tl.sqrt_rn(acc + norm_eps)
    else:
        norm = tl.sqrt(acc + norm_eps)
    tl.store(norm_ptr + ng * P + p, norm.to(norm_ptr.dtype.element_ty), mask=p_ok)

    # Max-out and scaling for every output channel of the group.
    offs_o = tl.arange(0, BLOCK_O)
    for o0 in range(0, Og, BLOCK_O):
        o_ok = o0 + offs_o < Og
        channel = n * G * Og + g * Og + o0 + offs_o  # flat (sample, output channel) index
        mask = o_ok[:, None] & p_ok[None, :]
        lin_rows = lin_ptr + (channel * MAX_OUT)[:, None] * P + p[None, :]
        best = tl.load(lin_rows, mask=mask, other=0.0).to(ACC)
        for m in tl.static_range(1, MAX_OUT):
            unit = tl.load(lin_rows + m * P, mask=mask, other=0.0).to(ACC)
            best = tl.maximum(best, unit, propagate_nan=tl.PropagateNan.ALL)
        if B_IS_TWO:
            result = tl.abs(best) / norm[None, :] * best
        else:
            a = tl.abs(best / norm[None, :]) + cos_eps
            result = tl.exp2(tl.log2(a) * b_minus_1) * best
        tl.store(out_ptr + channel[:, None] * P + p[None, :], result.to(out_ptr.dtype.element_ty), mask=mask)


def bcos_conv2d_triton(input, weight, stride, padding, dilation, groups, max_out, b):
    """(result, linear, norm) like torch.ops.kdfast.bcos_conv2d: conv by the backend, the rest in Triton."""
    if input.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"kdfast.bcos_conv2d (Triton): unsupported dtype {input.dtype}")
    x = input.contiguous()
    linear = F.conv2d(x, weight, None, stride, padding, dilation, groups).contiguous()
    n, c, h, w = x.shape
    ho, wo = linear.shape[2:]
    out_channels = weight.shape[0] // max_out
    out = linear.new_empty(n, out_channels, ho, wo)
    norm = linear.new_empty(n, groups, ho, wo)
    positions = ho * wo
    if out.numel() == 0:
        return out, linear, norm
    block_p = 64 if positions >= 1024 else 32
    scalar_args, in_memory = scalars(x, float(b) - 1.0, NORM_EPS, COS_EPS)
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    squares = x.new_empty(n * groups, h * w, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    with device_of(x):
        for ng0 in range(0, n * groups, MAX_GRID_YZ):  # tiles of at most 65535 (sample, group) pairs
            pairs = min(MAX_GRID_YZ, n * groups - ng0)
            _channel_square_sum_kernel[(triton.cdiv(h * w, _BLOCK_PIXELS), pairs)](
                x, squares, h * w, c // groups, ng0, BLOCK=_BLOCK_PIXELS, BLOCK_C=_BLOCK_C, ACC=acc,
            )
            _bcos_epilogue_kernel[(triton.cdiv(positions, block_p), pairs)](
                squares, linear, out, norm, h, w, ho, wo, groups, out_channels // groups, ng0,
                stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], *scalar_args,
                KH=weight.shape[2], KW=weight.shape[3], MAX_OUT=max_out, B_IS_TWO=float(b) == 2.0,
                BLOCK_P=block_p, BLOCK_O=_BLOCK_O, ACC=acc, SCALARS_IN_MEMORY=in_memory,
            )
    return out, linear, norm
