"""Triton kernels of torch.ops.kdfast.kd_explain_loss (registered for CUDA in kdfast/ops/kd_explain_loss.py).

Forward: per row, one program streams the row's logits twice (max, then exp-sums and the KL's weighted gap)
and writes its KL and softmax statistics, while up to 256 programs stream chunks of its maps once (dot
product and squared norms as partial sums); then ONE program reduces the partial sums and takes both batch
means in a fixed order (deterministic; no torch reductions after the kernels). Backward: elementwise over
(row, block) programs, reading the row's statistics. Sums accumulate in float32 (float64 for float64 inputs).
Runs on CPU tensors under TRITON_INTERPRET=1, which is how the tests check it without a GPU.
"""
import torch
import triton
import triton.language as tl

from kdfast.ops.kd_explain_loss import STATS_COLUMNS, check_loss_inputs
from kdfast.ops.triton._launch import MAX_GRID_YZ, device_of, kernel_scalar, scalars

_MAX_BLOCK = 2048
_MAX_CHUNKS = 256  # map chunks per row in the forward (their partial sums are reduced by one program)


@triton.jit
def _forward_kernel(s_logits, t_logits, s_maps, t_maps, stats, row_kl, partials, K, N, CHUNKS, T_arg,
                    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, NUM_STATS: tl.constexpr,
                    ACC: tl.constexpr, SCALARS_IN_MEMORY: tl.constexpr):
    """Program (b, 0): row b's KL and softmax statistics. Program (b, 1 + c): the dot product and squared norms
    of chunk c (CHUNK values) of row b's maps, as partial sums (so that a row's maps stream in parallel)."""
    b = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    T = kernel_scalar(T_arg, SCALARS_IN_MEMORY)
    if part == 0:
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
        row = stats + b * NUM_STATS
        tl.store(row + 0, row_max_s)
        tl.store(row + 1, log_z_s)
        tl.store(row + 2, row_max_t)
        tl.store(row + 3, log_z_t)
    else:
        first = (part - 1).to(tl.int64) * CHUNK
        offs_n = tl.arange(0, BLOCK_N)
        dot = tl.zeros([BLOCK_N], ACC)
        ss = tl.zeros([BLOCK_N], ACC)
        tt = tl.zeros([BLOCK_N], ACC)
        for n0 in range(0, CHUNK, BLOCK_N):
            idx = first + n0 + offs_n
            mask = idx < N
            u = tl.load(s_maps + b * N + idx, mask=mask, other=0.0).to(ACC)
            v = tl.load(t_maps + b * N + idx, mask=mask, other=0.0).to(ACC)
            dot += u * v
            ss += u * u
            tt += v * v
        out = partials + (b * CHUNKS + part - 1) * 3
        tl.store(out + 0, tl.sum(dot, axis=0))
        tl.store(out + 1, tl.sum(ss, axis=0))
        tl.store(out + 2, tl.sum(tt, axis=0))


@triton.jit
def _finish_kernel(stats, row_kl, partials, kd_out, explanation_out, B, CHUNKS, T_arg, lam_arg, eps_arg,
                   BLOCK_B: tl.constexpr, BLOCK_CHUNKS: tl.constexpr, NUM_STATS: tl.constexpr, ACC: tl.constexpr,
                   SCALARS_IN_MEMORY: tl.constexpr):
    """One program: each row's map statistics from its chunks, then both batch means, all in a fixed order
    (the result does not depend on scheduling) and with no further launch."""
    T = kernel_scalar(T_arg, SCALARS_IN_MEMORY)
    lam = kernel_scalar(lam_arg, SCALARS_IN_MEMORY)
    eps = kernel_scalar(eps_arg, SCALARS_IN_MEMORY)
    offs_c = tl.arange(0, BLOCK_CHUNKS)
    kl_sum = tl.zeros([BLOCK_B], ACC)
    gap_sum = tl.zeros([BLOCK_B], ACC)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        ok = rows < B
        cells = partials + (rows[:, None].to(tl.int64) * CHUNKS + offs_c[None, :]) * 3
        cell_ok = ok[:, None] & (offs_c < CHUNKS)[None, :]
        dot = tl.sum(tl.load(cells + 0, mask=cell_ok, other=0.0), axis=1)
        norm_s = tl.sqrt(tl.sum(tl.load(cells + 1, mask=cell_ok, other=0.0), axis=1))
        norm_t = tl.sqrt(tl.sum(tl.load(cells + 2, mask=cell_ok, other=0.0), axis=1))
        row = stats + rows.to(tl.int64) * NUM_STATS
        tl.store(row + 4, norm_s, mask=ok)
        tl.store(row + 5, norm_t, mask=ok)
        tl.store(row + 6, dot, mask=ok)
        cos = dot / (tl.maximum(norm_s, eps) * tl.maximum(norm_t, eps))
        gap_sum += tl.where(ok, 1.0 - cos, 0.0)
        kl_sum += tl.load(row_kl + rows, mask=ok, other=0.0)
    tl.store(kd_out, T * T * tl.sum(kl_sum, axis=0) / B)
    tl.store(explanation_out, lam * tl.sum(gap_sum, axis=0) / B)


@triton.jit
def _backward_kernel(grad_kd, grad_explanation, s_logits, t_logits, s_maps, t_maps, stats, grad_logits, grad_maps,
                     B, K, N, T_arg, lam_arg, eps_arg,
                     BLOCK: tl.constexpr, NUM_STATS: tl.constexpr, ACC: tl.constexpr, SCALARS_IN_MEMORY: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    T = kernel_scalar(T_arg, SCALARS_IN_MEMORY)
    lam = kernel_scalar(lam_arg, SCALARS_IN_MEMORY)
    eps = kernel_scalar(eps_arg, SCALARS_IN_MEMORY)
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
    kd, explanation = s_logits.new_empty(()), s_logits.new_empty(())
    block_n = min(1024, triton.next_power_of_2(N))
    chunk = max(4 * block_n, triton.next_power_of_2(triton.cdiv(N, _MAX_CHUNKS)))  # at most _MAX_CHUNKS per row
    chunks = triton.cdiv(N, chunk)
    partials = s_logits.new_empty(B, chunks, 3)
    (T_arg, lam_arg, eps_arg), in_memory = scalars(s_logits, T, lam, eps)
    with device_of(s_logits):
        _forward_kernel[(B, 1 + chunks)](
            s_logits, t_logits, s_maps, t_maps, stats, row_kl, partials, K, N, chunks, T_arg,
            BLOCK_K=_block(K), BLOCK_N=block_n, CHUNK=chunk, NUM_STATS=len(STATS_COLUMNS),
            ACC=_accumulator(s_logits.dtype), SCALARS_IN_MEMORY=in_memory,
        )
        _finish_kernel[(1,)](
            stats, row_kl, partials, kd, explanation, B, chunks, T_arg, lam_arg, eps_arg,
            BLOCK_B=min(64, triton.next_power_of_2(B)), BLOCK_CHUNKS=triton.next_power_of_2(chunks),
            NUM_STATS=len(STATS_COLUMNS), ACC=_accumulator(s_logits.dtype), SCALARS_IN_MEMORY=in_memory,
        )
    return kd, explanation, stats


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
