"""Triton kernels of torch.ops.kdfast.kd_explain_loss (registered for CUDA in kdfast/ops/kd_explain_loss.py).

One op call is one launch sequence:
1. rows: per row, one program streams the row's logits (max; exp-sums and the KL's weighted gap; with
   compute_grad a third pass writing d kd/d logits while the row is in L1/L2), while up to 256 programs stream
   chunks of its maps once (dot product and squared norms as partial sums);
2. finish: ONE program reduces the partial sums and takes both batch means in a fixed order (deterministic;
   no torch reductions after the kernels); with compute_grad it also writes each row's two cosine-gradient
   coefficients;
3. with compute_grad only: map gradients over the same (row, chunk) programs as step 1 (the coefficients need
   the whole row's norms, so the maps are read a second time).
Sums accumulate in float32 (float64 for float64 inputs). The wrapper in kdfast/ops/kd_explain_loss.py has
validated the arguments; this module checks only the invariants its indexing relies on (direct torch.ops
calls skip the wrapper). Runs on CPU tensors under TRITON_INTERPRET=1, which is how the tests check it
without a GPU.
"""
import torch
import triton
import triton.language as tl

from kdfast.ops.triton._launch import device_of, kernel_scalar, scalars

_MAX_BLOCK = 2048
_MAX_CHUNKS = 256  # map chunks per row (their partial sums are reduced by one program)


@triton.jit
def _rows_kernel(s_logits, t_logits, s_maps, t_maps, row_kl, partials, grad_logits, B, K, N, CHUNKS, T_arg,
                 BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr,
                 SCALARS_IN_MEMORY: tl.constexpr, COMPUTE_GRAD: tl.constexpr):
    """Program (b, 0): row b's KL (and, with COMPUTE_GRAD, d kd/d logits). Program (b, 1 + c): the dot product
    and squared norms of chunk c (CHUNK values) of row b's maps, as partial sums (a row's maps stream in
    parallel)."""
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
        sum_z_s = tl.sum(z_s, axis=0)
        sum_z_t = tl.sum(z_t, axis=0)
        tl.store(row_kl + b, tl.sum(gap, axis=0) / sum_z_t - (tl.log(sum_z_t) - tl.log(sum_z_s)))
        if COMPUTE_GRAD:
            # d(T² mean KL)/ds_j = T (p_s,j − p_t,j) / B; the row was just read, so this pass hits the cache.
            logit_scale = T / B
            for k0 in range(0, K, BLOCK_K):
                mask = k0 + offs_k < K
                x = (tl.load(s_logits + b * K + k0 + offs_k, mask=mask, other=0.0).to(ACC) - row_max_s) / T
                y = (tl.load(t_logits + b * K + k0 + offs_k, mask=mask, other=0.0).to(ACC) - row_max_t) / T
                g = logit_scale * (tl.exp(x) / sum_z_s - tl.exp(y) / sum_z_t)
                tl.store(grad_logits + b * K + k0 + offs_k, g.to(grad_logits.dtype.element_ty), mask=mask)
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
def _finish_kernel(row_kl, partials, kd_out, explanation_out, map_coefficients, B, CHUNKS, T_arg, lam_arg, eps_arg,
                   BLOCK_B: tl.constexpr, BLOCK_CHUNKS: tl.constexpr, ACC: tl.constexpr,
                   SCALARS_IN_MEMORY: tl.constexpr, COMPUTE_GRAD: tl.constexpr):
    """One program: each row's cosine from its chunks, then both batch means, all in a fixed order (the result
    does not depend on scheduling); with COMPUTE_GRAD each row's dcos/du = along_teacher·v − along_student·u
    coefficients for the map-gradient kernel."""
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
        # Each norm is clamped at eps (as torch.nn.functional.cosine_similarity does): a zero map has cos = 0.
        ns = tl.maximum(norm_s, eps)
        nt = tl.maximum(norm_t, eps)
        cos = dot / (ns * nt)
        gap_sum += tl.where(ok, 1.0 - cos, 0.0)
        kl_sum += tl.load(row_kl + rows, mask=ok, other=0.0)
        if COMPUTE_GRAD:
            # dcos/du = v / (ns nt) - cos u / ns², the second term only where the student norm is not clamped.
            out = map_coefficients + rows.to(tl.int64) * 2
            tl.store(out + 0, 1.0 / (ns * nt), mask=ok)
            tl.store(out + 1, tl.where(norm_s > eps, cos / (ns * ns), 0.0), mask=ok)
    tl.store(kd_out, T * T * tl.sum(kl_sum, axis=0) / B)
    tl.store(explanation_out, lam * tl.sum(gap_sum, axis=0) / B)


@triton.jit
def _map_grad_kernel(s_maps, t_maps, map_coefficients, grad_maps, B, N, lam_arg,
                     BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr, SCALARS_IN_MEMORY: tl.constexpr):
    """Program (b, c): d(lam mean(1 − cos))/du = −lam/B · dcos/du over chunk c of row b's maps."""
    b = tl.program_id(0).to(tl.int64)
    first = tl.program_id(1).to(tl.int64) * CHUNK
    map_scale = -kernel_scalar(lam_arg, SCALARS_IN_MEMORY) / B
    along_teacher = tl.load(map_coefficients + b * 2 + 0)
    along_student = tl.load(map_coefficients + b * 2 + 1)
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(0, CHUNK, BLOCK_N):
        idx = first + n0 + offs_n
        mask = idx < N
        u = tl.load(s_maps + b * N + idx, mask=mask, other=0.0).to(ACC)
        v = tl.load(t_maps + b * N + idx, mask=mask, other=0.0).to(ACC)
        g = map_scale * (v * along_teacher - u * along_student)
        tl.store(grad_maps + b * N + idx, g.to(grad_maps.dtype.element_ty), mask=mask)


def _accumulator(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_invariants(s_logits, t_logits, s_maps, t_maps, T, eps):
    """What the kernels' indexing relies on, O(1) (the C++ CPU kernel's checks, same messages)."""
    def need(ok, message):
        if not ok:
            raise RuntimeError(f"kdfast.kd_explain_loss: {message}")

    need(s_logits.dim() == 2, f"student_logits must be (B, K), got {tuple(s_logits.shape)}")
    need(s_maps.dim() == 2, f"student_maps must be (B, N), got {tuple(s_maps.shape)}")
    need(t_logits.shape == s_logits.shape, f"teacher_logits must match student_logits {tuple(s_logits.shape)}, got {tuple(t_logits.shape)}")
    need(t_maps.shape == s_maps.shape, f"teacher_maps must match student_maps {tuple(s_maps.shape)}, got {tuple(t_maps.shape)}")
    need(s_maps.shape[0] == s_logits.shape[0], f"student_maps has {s_maps.shape[0]} rows but student_logits has {s_logits.shape[0]}")
    need(s_logits.numel() > 0 and s_maps.numel() > 0,
         f"needs B >= 1 rows, K >= 1 classes and N >= 1 map values, got logits {tuple(s_logits.shape)} and maps {tuple(s_maps.shape)}")
    need(s_logits.dtype in (torch.float32, torch.float64), f"inputs must be float32 or float64, got {s_logits.dtype}")
    for t in (t_logits, s_maps, t_maps):
        need(t.dtype == s_logits.dtype, f"all inputs must share one dtype ({s_logits.dtype}), got {t.dtype}")
        need(t.device == s_logits.device, f"all inputs must be on {s_logits.device}")
    need(T > 0.0 and T != float("inf"), f"temperature T must be a positive number, got {T}")
    need(eps > 0.0, f"eps must be positive, got {eps}")


def kd_explain_loss_triton(student_logits, teacher_logits, student_maps, teacher_maps, T, lam, eps, compute_grad):
    """(kd, explanation, d kd/d student_logits, d explanation/d student_maps) for same-dtype float32/float64
    (B, K) logits and (B, N) maps; the two gradients are 0-element tensors unless compute_grad."""
    _check_invariants(student_logits, teacher_logits, student_maps, teacher_maps, T, eps)
    s_logits, t_logits, s_maps, t_maps = (t.contiguous() for t in (student_logits, teacher_logits, student_maps, teacher_maps))
    B, K = s_logits.shape
    N = s_maps.shape[1]
    row_kl = s_logits.new_empty(B)
    kd, explanation = s_logits.new_empty(()), s_logits.new_empty(())
    grad_logits = s_logits.new_empty((B, K) if compute_grad else (0,))
    grad_maps = s_maps.new_empty((B, N) if compute_grad else (0,))
    map_coefficients = s_maps.new_empty((B, 2) if compute_grad else (0,))
    block_k = min(_MAX_BLOCK, triton.next_power_of_2(K))
    block_n = min(1024, triton.next_power_of_2(N))
    chunk = max(4 * block_n, triton.next_power_of_2(triton.cdiv(N, _MAX_CHUNKS)))  # at most _MAX_CHUNKS per row
    chunks = triton.cdiv(N, chunk)
    partials = s_logits.new_empty(B, chunks, 3)
    (T_arg, lam_arg, eps_arg), in_memory = scalars(s_logits, T, lam, eps)
    acc = _accumulator(s_logits.dtype)
    with device_of(s_logits):
        _rows_kernel[(B, 1 + chunks)](
            s_logits, t_logits, s_maps, t_maps, row_kl, partials, grad_logits, B, K, N, chunks, T_arg,
            BLOCK_K=block_k, BLOCK_N=block_n, CHUNK=chunk, ACC=acc, SCALARS_IN_MEMORY=in_memory,
            COMPUTE_GRAD=compute_grad,
        )
        _finish_kernel[(1,)](
            row_kl, partials, kd, explanation, map_coefficients, B, chunks, T_arg, lam_arg, eps_arg,
            BLOCK_B=min(64, triton.next_power_of_2(B)), BLOCK_CHUNKS=triton.next_power_of_2(chunks), ACC=acc,
            SCALARS_IN_MEMORY=in_memory, COMPUTE_GRAD=compute_grad,
        )
        if compute_grad:
            _map_grad_kernel[(B, chunks)](
                s_maps, t_maps, map_coefficients, grad_maps, B, N, lam_arg,
                BLOCK_N=block_n, CHUNK=chunk, ACC=acc, SCALARS_IN_MEMORY=in_memory,
            )
    return kd, explanation, grad_logits, grad_maps
