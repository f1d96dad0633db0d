"""Triton kernels of torch.ops.kdfast.kd_explain_loss (registered for CUDA in kdfast/ops/kd_explain_loss.py).

Forward: one program per row streams the row's logits twice (max, then exp-sums and the KL's weighted gap)
and its maps once (dot product and squared norms), and writes the row's KL and statistics; the B-row batch
mean is a small torch reduction, so the result does not depend on scheduling. Backward: elementwise over
(row, block) programs, reading the row's statistics. Sums accumulate in float32 (float64 for float64 inputs).
Runs on CPU tensors under TRITON_INTERPRET=1, which is how the tests check it without a GPU.
"""
import torch
import triton
import triton.language as tl

from kdfast.ops.kd_explain_loss import STATS_COLUMNS, check_loss_inputs
from kdfast.ops.triton._launch import MAX_GRID_YZ, device_of, scalars

_MAX_BLOCK = 2048


@triton.jit
def _forward_kernel(s_logits, t_logits, s_maps, t_maps, stats, row_kl, K, N, T_arg,
                    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STATS: tl.constexpr, ACC: tl.constexpr,
                    SCALARS_IN_MEMORY: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    if SCALARS_IN_MEMORY:  # float64: T as a float64 tensor (a Python float would arrive as float32)
        T = tl.load(T_arg)
    else:
        T = T_arg
    offs_k = tl.arange(0, BLOCK_K)
    max_s = tl.full([BLOCK_K], float("-inf"), ACC)
    max_t = tl.full([BLOCK_K], float("-inf"), ACC)
    for k0 in range(0, K, BLOCK_K):
        mask = k0 + offs_k < K
        max_s = tl.maximum(max_s, tl.load(s_logits + b * K + k0 + offs_k, mask=mask, other=float("-inf")).to(ACC))
        max_t = tl.maximum(max_t, tl.load(t_logits + b * K + k0 + offs_k, mask=mask, other=float("-inf")).to(ACC))
    row_max_s = tl.max(max_s, axis=0)
    row_max_t = tl.max(max_t, axis=0)
    # KL(p_t || p_s) = sum_j p_t,j [(t_j - max_t) - (s_j - max_s)] / T - (log z_t - log z_s), with
    # p_t,j = exp((t_j - max_t) / T) / z_t: every term is a difference from its row's maximum.
    z_s = tl.zeros([BLOCK_K], ACC)
    z_t = tl.zeros([BLOCK_K], ACC)
    gap = tl.zeros([BLOCK_K], ACC)
    for k0 in range(0, K, BLOCK_K):
        mask = k0 + offs_k < K
        x = (tl.load(s_logits + b * K + k0 + offs_k, mask=mask, other=0.0).to(ACC) - row_max_s) / T
        y = (tl.load(t_logits + b * K + k0 + offs_k, mask=mask, other=0.0).to(ACC) - row_max_t) / T
        e_t = tl.where(mask, tl.exp(y), 0.0)
        z_s += tl.where(mask, tl.exp(x), 0.0)
        z_t += e_t
        gap += tl.where(mask, e_t * (y - x), 0.0)
    sum_z_t = tl.sum(z_t, axis=0)
    log_z_s = tl.log(tl.sum(z_s, axis=0))
    log_z_t = tl.log(sum_z_t)
    tl.store(row_kl + b, tl.sum(gap, axis=0) / sum_z_t - (log_z_t - log_z_s))

    offs_n = tl.arange(0, BLOCK_N)
    dot = tl.zeros([BLOCK_N], ACC)
    ss = tl.zeros([BLOCK_N], ACC)
    tt = tl.zeros([BLOCK_N], ACC)
    for n0 in range(0, N, BLOCK_N):
        mask = n0 + offs_n < N
        u = tl.load(s_maps + b * N + n0 + offs_n, mask=mask, other=0.0).to(ACC)
        v = tl.load(t_maps + b * N + n0 + offs_n, mask=mask, other=0.0).to(ACC)
        dot += u * v
        ss += u * u
        tt += v * v
    row = stats + b * NUM_STATS
    tl.store(row + 0, row_max_s)
    tl.store(row + 1, log_z_s)
    tl.store(row + 2, row_max_t)
    tl.store(row + 3, log_z_t)
    tl.store(row + 4, tl.sqrt(tl.sum(ss, axis=0)))
    tl.store(row + 5, tl.sqrt(tl.sum(tt, axis=0)))
    tl.store(row + 6, tl.sum(dot, axis=0))


@triton.jit
def _backward_kernel(grad_kd, grad_explanation, s_logits, t_logits, s_maps, t_maps, stats, grad_logits, grad_maps,
                     B, K, N, T_arg, lam_arg, eps_arg,
                     BLOCK: tl.constexpr, NUM_STATS: tl.constexpr, ACC: tl.constexpr, SCALARS_IN_MEMORY: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    if SCALARS_IN_MEMORY:  # float64: T, lam, eps as float64 tensors (Python floats would arrive as float32)
        T = tl.load(T_arg)
        lam = tl.load(lam_arg)
        eps = tl.load(eps_arg)
    else:
        T = T_arg
        lam = lam_arg
        eps = eps_arg
    block = tl.program_id(1)
    logit_blocks = tl.cdiv(K, BLOCK)
    row = stats + b * NUM_STATS
    offs = tl.arange(0, BLOCK)
    if block < logit_blocks:
        # d(T^2 mean KL)/ds_j = T (p_s,j - p_t,j) / B
        scale = tl.load(grad_kd).to(ACC) * T / B
        idx = block * BLOCK + offs
        mask = idx < K
        x = (tl.load(s_logits + b * K + idx, mask=mask, other=0.0).to(ACC) - tl.load(row + 0).to(ACC)) / T
        y = (tl.load(t_logits + b * K + idx, mask=mask, other=0.0).to(ACC) - tl.load(row + 2).to(ACC)) / T
        g = scale * (tl.exp(x - tl.load(row + 1).to(ACC)) - tl.exp(y - tl.load(row + 3).to(ACC)))
        tl.store(grad_logits + b * K + idx, g.to(grad_logits.dtype.element_ty), mask=mask)
    else:
        # d(lam mean(1 - cos))/du = -lam/B (v / (ns nt) - [|u| > eps] cos u / ns^2), norms clamped at eps
        scale = -tl.load(grad_explanation).to(ACC) * lam / B
        norm_s = tl.load(row + 4).to(ACC)
        ns = tl.maximum(norm_s, eps)
        nt = tl.maximum(tl.load(row + 5).to(ACC), eps)
        cos = tl.load(row + 6).to(ACC) / (ns * nt)
        along_teacher = 1.0 / (ns * nt)
        along_student = tl.where(norm_s > eps, cos / (ns * ns), 0.0)
        idx = (block - logit_blocks) * BLOCK + offs
        mask = idx < N
        u = tl.load(s_maps + b * N + idx, mask=mask, other=0.0).to(ACC)
        v = tl.load(t_maps + b * N + idx, mask=mask, other=0.0).to(ACC)
        g = scale * (v * along_teacher - u * along_student)
        tl.store(grad_maps + b * N + idx, g.to(grad_maps.dtype.element_ty), mask=mask)


def _accumulator(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(size):
    return min(_MAX_BLOCK, triton.next_power_of_2(size))


def kd_explain_loss_forward(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps):
    """(kd, explanation, stats) for same-dtype float32/float64 (B, K) logits and (B, N) maps."""
    s_logits, t_logits, s_maps, t_maps = (
        t.contiguous() for t in check_loss_inputs(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps)
    )
    if s_logits.dtype != student_logits.dtype:
        raise TypeError(f"kdfast.kd_explain_loss: inputs must share one float32/float64 dtype, got {student_logits.dtype}")
    B, K = s_logits.shape
    N = s_maps.shape[1]
    stats = s_logits.new_empty(B, len(STATS_COLUMNS))
    row_kl = s_logits.new_empty(B)
    (T_arg,), in_memory = scalars(s_logits, T)
    with device_of(s_logits):
        _forward_kernel[(B,)](
            s_logits, t_logits, s_maps, t_maps, stats, row_kl, K, N, T_arg,
            BLOCK_K=_block(K), BLOCK_N=_block(N), NUM_STATS=len(STATS_COLUMNS), ACC=_accumulator(s_logits.dtype),
            SCALARS_IN_MEMORY=in_memory,
        )
    cos = stats[:, 6] / (stats[:, 4].clamp_min(eps) * stats[:, 5].clamp_min(eps))
    return T * T * row_kl.mean(), lam * (1.0 - cos).mean(), stats


def kd_explain_loss_backward(grad_kd, grad_explanation, student_logits, teacher_logits, student_maps, teacher_maps,
                             stats, T, lam, eps):
    """(grad student_logits, grad student_maps) from the forward's stats; grads of the two scalar outputs."""
    s_logits, t_logits, s_maps, t_maps = (
        t.contiguous() for t in check_loss_inputs(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps)
    )
    B, K = s_logits.shape
    N = s_maps.shape[1]
    if stats.shape != (B, len(STATS_COLUMNS)) or stats.dtype != s_logits.dtype:
        raise ValueError(f"kdfast.kd_explain_loss_backward: stats must be the forward's ({B}, {len(STATS_COLUMNS)}) output, got {tuple(stats.shape)}")
    grad_logits = torch.empty_like(s_logits)
    grad_maps = torch.empty_like(s_maps)
    block = _block(max(K, N))
    grid = (B, triton.cdiv(K, block) + triton.cdiv(N, block))
    if grid[1] > MAX_GRID_YZ:
        raise ValueError(f"kdfast.kd_explain_loss_backward (Triton): K = {K} and N = {N} need {grid[1]} blocks of "
                         f"{block} per row, more than the {MAX_GRID_YZ} a launch allows")
    (T_arg, lam_arg, eps_arg), in_memory = scalars(s_logits, T, lam, eps)
    with device_of(s_logits):
        _backward_kernel[grid](
            grad_kd.reshape(()), grad_explanation.reshape(()), s_logits, t_logits, s_maps, t_maps, stats.contiguous(),
            grad_logits, grad_maps, B, K, N, T_arg, lam_arg, eps_arg,
            BLOCK=block, NUM_STATS=len(STATS_COLUMNS), ACC=_accumulator(s_logits.dtype), SCALARS_IN_MEMORY=in_memory,
        )
    return grad_logits, grad_maps
