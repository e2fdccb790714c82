"""Triton kernels for the reset-aware selective scan: chunked, time-parallel forward and backward.

    h_t = (1 - s_t) * exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t = C_t . h_t + D * u_t            (then y_t *= silu(z_t) when z is given)
    dt_t = softplus(delta_t + delta_bias) (bias and softplus optional)

Same argument layout and semantics as :func:`resel_train.ops.scan.selective_scan` (its ``"loop"``
reference): u, delta, z (batch, d_inner, L); A (d_inner, d_state); B, C (batch, d_state, L);
D, delta_bias (d_inner,); reset (batch, L); initial_state (batch, d_inner, d_state).

Layout of the work
- One program per (batch row, block of BLOCK_D channels); it walks time in chunks of CHUNK steps
  (T_TILE = CHUNK rounded up to a power of two; the columns past CHUNK or past L are masked).
- Per chunk it loads (BLOCK_D, T_TILE) tiles of u / delta / z and (BLOCK_N, T_TILE) tiles of
  B / C, each contiguous in time, and forms the chunk's decay a = exp(dt * A) * (1 - s) and drive
  b = dt * u * B as (BLOCK_D, BLOCK_N, T_TILE) register tiles. The state carried in from the
  previous chunk enters as b_0 += a_0 * h_in, and ``tl.associative_scan`` over the time axis with
  (a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2) gives every h_t of the chunk at once. A reset is
  a = 0, so nothing before it survives; masked columns are a = 1, b = 0 (the state passes
  through unchanged), so the last column is the state leaving the chunk.
- The forward writes the state entering every chunk to a checkpoint buffer (batch, n_chunks,
  d_inner, d_state) when a gradient is needed; the (batch, d_inner, L, d_state) history is never
  materialised (memory O(checkpoints + one chunk tile)).
- The backward walks the chunks in reverse. It recomputes the chunk's states from its
  checkpoint with the same forward scan, then gets g_t = dLoss/dh_t from a reverse scan of
  (a_{t+1}, gy_t * C_t): g_t = a_{t+1} * g_{t+1} + gy_t * C_t, where the gradient flowing in from
  the next chunk (or from the last state) is added at the chunk's last step. a_{t+1} is
  recomputed from delta loaded one step later (no shift of a register tile). The state before
  step t enters the decay gradients as a_t * h_{t-1} = h_t - b_t. The gradient leaving the
  chunk, a_0 * g_0, is carried to the previous chunk and is dLoss/d initial_state at the end.
- Gradients that are reductions across programs: dB, dC (summed over channels) are added with
  fp32/fp64 atomics into (batch, d_state, L) buffers, so their summation order is not fixed;
  dA, dD and delta_bias are per-row partials summed with torch afterwards.
- Accumulation is float32 (float64 when the inputs are float64, which the tests use) for every
  input dtype incl. bf16/fp16; outputs and input gradients are cast back to the input dtypes;
  the returned last state is in the accumulation dtype, as in the PyTorch paths.

Launch configuration: on a GPU, BLOCK_D and num_warps are autotuned per (batch, d_inner,
d_state, CHUNK) and dtype over :data:`_CONFIGS` (pruned to tiles that fit registers); in
Triton's interpreter one fixed config is used. CHUNK (the checkpoint interval and time tile) is
chosen in Python (:func:`default_chunk`) because the forward and the backward must agree on it.

triton is an optional (GPU) dependency: this module is imported lazily by
``selective_scan(impl="triton")`` and nothing else in ``resel_train`` imports it. With
``TRITON_INTERPRET=1`` set *before* triton is imported, the kernels run in Triton's interpreter
on CPU tensors (how the tests exercise them).

Verification status: checked against the float64 loop reference in Triton's interpreter, plus an
ahead-of-time compile of both kernels for sm_90 (TTIR -> PTX -> cubin) in the tests. Not yet
run or timed on a GPU: the autotune space and default chunk are untuned guesses.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["selective_scan_triton", "default_chunk"]


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus(x) (beta 1, threshold 20) with an accurate log1p(exp(x)):
    # log1p(e) = log(w) * e / (w - 1) with w = 1 + e (exact-ish even when e << eps).
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _softplus_grad(x):
    # d softplus / dx as torch computes it: 1 above the threshold, sigmoid(x) below.
    e = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, 1.0, e / (e + 1.0))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _combine(a1, b1, a2, b2):
    # composition of h -> a1 * h + b1 then h -> a2 * h + b2 (first-order linear recurrence)
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_dt(delta_ptrs, mask, bias, acc: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(dt_raw, dt) for a (BLOCK_D, T_TILE) tile: dt_raw = delta (+ bias), dt = softplus(dt_raw)."""
    dt_raw = tl.load(delta_ptrs, mask=mask, other=0.0).to(acc)
    if HAS_BIAS:
        dt_raw = dt_raw + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt_raw)
    else:
        dt = dt_raw
    return dt_raw, dt


@triton.jit
def _chunk_states(
    h_in, A, dt, uv, Bt, keep_ptrs, mask_t, first, HAS_RESET: tl.constexpr, acc: tl.constexpr
):
    """The states h (BLOCK_D, BLOCK_N, T_TILE) of one chunk, by a scan of its decays and drives.

    h_in (BLOCK_D, BLOCK_N) is the state entering the chunk; masked time columns get a = 1, b = 0.
    Only h is returned so that a and b are dead after the scan (register pressure on the GPU).
    """
    a = tl.exp(dt[:, None, :] * A[:, :, None])
    if HAS_RESET:
        keep = tl.load(keep_ptrs, mask=mask_t, other=1.0).to(acc)
        a = a * keep[None, None, :]
    a = tl.where(mask_t[None, None, :], a, 1.0)
    b = (dt * uv)[:, None, :] * Bt[None, :, :]  # uv is 0 on masked columns
    b_in = tl.where(first[None, None, :], b + a * h_in[:, :, None], b)
    _, h = tl.associative_scan((a, b_in), 2, _combine)
    return h


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, keep_ptr, h0_ptr,
    y_ptr, last_ptr, ckpt_ptr,
    batch, d_inner, d_state, L, n_chunks,
    s_ub, s_ud, s_ul,
    s_deb, s_ded, s_del,
    s_ad, s_an,
    s_bb, s_bn, s_bl,
    s_cb, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_kb, s_kl,
    s_yb, s_yd, s_yl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr,
    CHUNK: tl.constexpr, T_TILE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    acc = last_ptr.dtype.element_ty  # float32, or float64 for fp64 inputs

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, T_TILE)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # (batch, d_inner, d_state)-contiguous offsets of this program's state tile
    tile = offs_d[:, None] * d_state + offs_n[None, :]
    state_stride = d_inner * d_state
    first = offs_t == 0

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(acc)
    bias = tl.zeros([BLOCK_D], dtype=acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * state_stride + tile, mask=mask_dn, other=0.0).to(acc)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=acc)

    u_rows = u_ptr + pid_b * s_ub + offs_d[:, None] * s_ud
    de_rows = delta_ptr + pid_b * s_deb + offs_d[:, None] * s_ded
    z_rows = z_ptr + pid_b * s_zb + offs_d[:, None] * s_zd
    y_rows = y_ptr + pid_b * s_yb + offs_d[:, None] * s_yd
    B_rows = B_ptr + pid_b * s_bb + offs_n[:, None] * s_bn
    C_rows = C_ptr + pid_b * s_cb + offs_n[:, None] * s_cn
    keep_row = keep_ptr + pid_b * s_kb

    for c in range(n_chunks):
        if STORE_CKPT:
            tl.store(ckpt_ptr + (pid_b * n_chunks + c) * state_stride + tile, h, mask=mask_dn)
        t = c * CHUNK + offs_t
        mask_t = (offs_t < CHUNK) & (t < L)
        mask_dt = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        uv = tl.load(u_rows + t[None, :] * s_ul, mask=mask_dt, other=0.0).to(acc)
        _, dt = _load_dt(de_rows + t[None, :] * s_del, mask_dt, bias, acc, HAS_BIAS, SOFTPLUS)
        Bt = tl.load(B_rows + t[None, :] * s_bl, mask=mask_nt, other=0.0).to(acc)
        Ct = tl.load(C_rows + t[None, :] * s_cl, mask=mask_nt, other=0.0).to(acc)
        hs = _chunk_states(h, A, dt, uv, Bt, keep_row + t * s_kl, mask_t, first, HAS_RESET, acc)
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        if HAS_D:
            y = y + Dv[:, None] * uv
        if HAS_Z:
            zv = tl.load(z_rows + t[None, :] * s_zl, mask=mask_dt, other=0.0).to(acc)
            y = y * (zv * _sigmoid(zv))
        tl.store(y_rows + t[None, :] * s_yl, y.to(y_ptr.dtype.element_ty), mask=mask_dt)
        # masked columns pass the state through, so the last column is the state leaving the chunk
        h = tl.sum(tl.where(offs_t[None, None, :] == T_TILE - 1, hs, 0.0), axis=2)

    tl.store(last_ptr + pid_b * state_stride + tile, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, keep_ptr,
    ckpt_ptr, gy_ptr, glast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    batch, d_inner, d_state, L, n_chunks,
    s_ub, s_ud, s_ul,
    s_deb, s_ded, s_del,
    s_ad, s_an,
    s_bb, s_bn, s_bl,
    s_cb, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_kb, s_kl,
    s_gb, s_gd, s_gl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, HAS_H0: tl.constexpr, HAS_GLAST: tl.constexpr,
    CHUNK: tl.constexpr, T_TILE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Reverse walk over the chunks. Outputs:
    du, ddelta, dz: (batch, d_inner, L) contiguous, input dtypes (plain stores);
    dB, dC: (batch, d_state, L) accumulation dtype, zero-initialised, atomically summed over channels;
    dA: (batch, d_inner, d_state), dD, dbias: (batch, d_inner) per-row partials; dh0: (batch, d_inner, d_state).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    acc = ckpt_ptr.dtype.element_ty

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, T_TILE)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    tile = offs_d[:, None] * d_state + offs_n[None, :]
    state_stride = d_inner * d_state
    first = offs_t == 0

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(acc)
    bias = tl.zeros([BLOCK_D], dtype=acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    # carry: dLoss/dh at the last step of the current chunk from everything after it
    if HAS_GLAST:
        carry = tl.load(glast_ptr + pid_b * state_stride + tile, mask=mask_dn, other=0.0).to(acc)
    else:
        carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=acc)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=acc)
    dD_acc = tl.zeros([BLOCK_D], dtype=acc)
    dbias_acc = tl.zeros([BLOCK_D], dtype=acc)

    u_rows = u_ptr + pid_b * s_ub + offs_d[:, None] * s_ud
    de_rows = delta_ptr + pid_b * s_deb + offs_d[:, None] * s_ded
    z_rows = z_ptr + pid_b * s_zb + offs_d[:, None] * s_zd
    gy_rows = gy_ptr + pid_b * s_gb + offs_d[:, None] * s_gd
    B_rows = B_ptr + pid_b * s_bb + offs_n[:, None] * s_bn
    C_rows = C_ptr + pid_b * s_cb + offs_n[:, None] * s_cn
    keep_row = keep_ptr + pid_b * s_kb
    out_rows = pid_b * d_inner * L + offs_d[:, None] * L  # du / ddelta / dz: (batch, d_inner, L)
    part_rows = pid_b * d_state * L + offs_n[:, None] * L  # dB / dC: (batch, d_state, L)

    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        start = c * CHUNK
        n_valid = tl.minimum(L - start, CHUNK)
        t = start + offs_t
        mask_t = offs_t < n_valid
        mask_dt = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        h_in = tl.load(ckpt_ptr + (pid_b * n_chunks + c) * state_stride + tile, mask=mask_dn, other=0.0)

        uv = tl.load(u_rows + t[None, :] * s_ul, mask=mask_dt, other=0.0).to(acc)
        dt_raw, dt = _load_dt(de_rows + t[None, :] * s_del, mask_dt, bias, acc, HAS_BIAS, SOFTPLUS)
        Bt = tl.load(B_rows + t[None, :] * s_bl, mask=mask_nt, other=0.0).to(acc)
        Ct = tl.load(C_rows + t[None, :] * s_cl, mask=mask_nt, other=0.0).to(acc)
        hs = _chunk_states(h_in, A, dt, uv, Bt, keep_row + t * s_kl, mask_t, first, HAS_RESET, acc)

        gy = tl.load(gy_rows + t[None, :] * s_gl, mask=mask_dt, other=0.0).to(acc)
        if HAS_Z:
            y_pre = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y_pre = y_pre + Dv[:, None] * uv
            zv = tl.load(z_rows + t[None, :] * s_zl, mask=mask_dt, other=0.0).to(acc)
            sz = _sigmoid(zv)
            dz = gy * y_pre * sz * (1.0 + zv * (1.0 - sz))
            tl.store(dz_ptr + out_rows + t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask_dt)
            gy = gy * (zv * sz)  # gradient w.r.t. the ungated output

        dC_t = tl.sum(gy[:, None, :] * hs, axis=0)
        tl.atomic_add(dC_ptr + part_rows + t[None, :], dC_t, mask=mask_nt, sem="relaxed")

        # decay of the next step inside this chunk, a_{t+1} (0 where t + 1 leaves the chunk)
        mask_next = offs_t + 1 < n_valid
        mask_dnext = mask_d[:, None] & mask_next[None, :]
        _, dt_next = _load_dt(de_rows + (t[None, :] + 1) * s_del, mask_dnext, bias, acc, HAS_BIAS, SOFTPLUS)
        a_next = tl.exp(dt_next[:, None, :] * A[:, :, None])
        if HAS_RESET:
            keep_next = tl.load(keep_row + (t + 1) * s_kl, mask=mask_next, other=1.0).to(acc)
            a_next = a_next * keep_next[None, None, :]
        a_next = tl.where(mask_next[None, None, :], a_next, 0.0)

        # g_t = dLoss/dh_t = gy_t * C_t + a_{t+1} g_{t+1} (+ carry at the chunk's last step)
        src = gy[:, None, :] * Ct[None, :, :]
        src = tl.where(offs_t[None, None, :] == n_valid - 1, src + carry[:, :, None], src)
        _, g = tl.associative_scan((a_next, src), 2, _combine, reverse=True)

        dtu = dt * uv
        dB_t = tl.sum(g * dtu[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + part_rows + t[None, :], dB_t, mask=mask_nt, sem="relaxed")
        d_dtu = tl.sum(g * Bt[None, :, :], axis=1)
        # dLoss/d(dt_t * A) = g_t * a_t * h_{t-1}, with a_t * h_{t-1} = h_t - dt_t * u_t * B_t
        # (the reset factor is a constant); the drive is recomputed, not kept alive since the scan
        g_log = g * (hs - dtu[:, None, :] * Bt[None, :, :])
        d_dt = d_dtu * uv + tl.sum(g_log * A[:, :, None], axis=1)
        dA_acc += tl.sum(g_log * dt[:, None, :], axis=2)
        if SOFTPLUS:
            d_dt = d_dt * _softplus_grad(dt_raw)
        d_dt = tl.where(mask_dt, d_dt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(d_dt, axis=1)
        du = d_dtu * dt
        if HAS_D:
            dD_acc += tl.sum(gy * uv, axis=1)
            du = du + gy * Dv[:, None]
        tl.store(du_ptr + out_rows + t[None, :], du.to(du_ptr.dtype.element_ty), mask=mask_dt)
        tl.store(ddelta_ptr + out_rows + t[None, :], d_dt.to(ddelta_ptr.dtype.element_ty), mask=mask_dt)
        # dLoss/dh at the previous chunk's last step: g_0 through this chunk's first decay a_0
        dt0 = tl.sum(tl.where(first[None, :], dt, 0.0), axis=1)
        a0 = tl.exp(dt0[:, None] * A)
        if HAS_RESET:
            a0 = a0 * tl.load(keep_row + start * s_kl).to(acc)
        carry = a0 * tl.sum(tl.where(first[None, None, :], g, 0.0), axis=2)

    tl.store(dA_ptr + pid_b * state_stride + tile, dA_acc, mask=mask_dn)
    if HAS_H0:
        tl.store(dh0_ptr + pid_b * state_stride + tile, carry, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * d_inner + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * d_inner + offs_d, dbias_acc, mask=mask_d)


# ----------------------------------------------------------------------------------------------
# launch configuration


def _interpreted() -> bool:
    """True when the kernels were built for Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_scan_fwd_kernel, triton.runtime.JITFunction)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def default_chunk(length: int, d_state: int) -> int:
    """Time steps per chunk (checkpoint interval and scan tile): ~2048 state elements per channel
    and chunk, a power of two in [16, 128], and no longer than L needs."""
    per_channel = max(16, min(128, 2048 // max(2, _next_pow2(d_state))))
    return min(per_channel, max(1, _next_pow2(length)))


# Autotune space on a GPU (BLOCK_D channels per program x warps), pruned per call by the fp32
# elements of one (BLOCK_D, BLOCK_N, T_TILE) tile per thread. sm_90 AOT builds (ptxas -v, fp32,
# d_state 64) gave: forward, 16 per thread: 174-217 registers, no spills; 32 per thread: 203
# (BLOCK_D 4, chunk 32) to 255 + 232 B spilled (BLOCK_D 1, chunk 64). Backward, 8 per thread:
# 236, no spills; 16 per thread: 254 no spills (BLOCK_D 2, 8 warps) to 255 + 120-148 B spilled.
# Timing on hardware decides among the survivors.
_CONFIGS = [triton.Config({"BLOCK_D": bd}, num_warps=w) for bd in (1, 2, 4, 8) for w in (2, 4, 8)]
_PER_THREAD = {"fwd": (4, 32), "bwd": (2, 16)}  # (least, most) tile elements per thread


def _pruner(kind: str):
    lo, hi = _PER_THREAD[kind]

    def prune(configs: list, named_args: dict, **kwargs) -> list:
        tile = kwargs["BLOCK_N"] * kwargs["T_TILE"]

        def per_thread(cfg) -> float:
            return cfg.kwargs["BLOCK_D"] * tile / (32 * cfg.num_warps)

        fits = [
            cfg for cfg in configs
            if lo <= per_thread(cfg) <= hi and cfg.kwargs["BLOCK_D"] <= _next_pow2(named_args["d_inner"])
        ]
        return fits or [min(configs, key=per_thread)]

    return prune


_KEY = ["batch", "d_inner", "d_state", "CHUNK"]
if not _interpreted():
    _fwd_tuned = triton.autotune(_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _pruner("fwd")})(
        _scan_fwd_kernel
    )
    # the benchmark runs the kernel repeatedly: the atomically accumulated dB / dC start from 0 each time
    _bwd_tuned = triton.autotune(
        _CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _pruner("bwd")}, reset_to_zero=["dB_ptr", "dC_ptr"]
    )(_scan_bwd_kernel)


def _fixed_config(d_inner: int, block_n: int, t_tile: int, block_d: int | None) -> tuple[int, int]:
    """(BLOCK_D, num_warps) without autotuning: the interpreter, or an explicit ``block_d``."""
    if block_d is None:
        block_d = min(8, _next_pow2(d_inner))
    elif block_d < 1 or block_d & (block_d - 1):
        raise ValueError(f"block_d must be a power of two; got {block_d}")
    num_warps = min(8, max(1, block_d * block_n * t_tile // 512))
    return block_d, num_warps


def _launch(kernel, tuned, batch: int, d_inner: int, block_d: int | None, args: tuple, consts: dict) -> None:
    """Autotuned launch on a GPU; one fixed config in the interpreter or when block_d is given."""
    if block_d is None and not _interpreted():
        tuned[lambda meta: (batch, triton.cdiv(d_inner, meta["BLOCK_D"]))](*args, **consts)
        return
    bd, num_warps = _fixed_config(d_inner, consts["BLOCK_N"], consts["T_TILE"], block_d)
    kernel[(batch, triton.cdiv(d_inner, bd))](*args, **consts, BLOCK_D=bd, num_warps=num_warps)


def _check_device(*tensors: Tensor | None) -> None:
    device = tensors[0].device
    for t in tensors:
        if t is not None and t.device != device:
            raise ValueError(f"all inputs must be on one device; got {device} and {t.device}")
    if device.type != "cuda" and not _interpreted():
        raise RuntimeError(
            "the Triton scan needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is "
            "imported, to run it on the CPU); use impl='parallel'"
        )


def _dummy(ref: Tensor) -> Tensor:
    return ref.new_empty(1)


class _TritonSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, keep, h0, delta_softplus, chunk, block_d):
        ctx.set_materialize_grads(False)  # unused outputs give None: skip their zero gradients
        batch, d_inner, length = u.shape
        d_state = A.shape[1]
        acc = torch.float64 if u.dtype == torch.float64 else torch.float32
        chunk = default_chunk(length, d_state) if chunk is None else int(chunk)
        n_chunks = triton.cdiv(length, chunk)
        store_ckpt = any(ctx.needs_input_grad)

        y = torch.empty(batch, d_inner, length, dtype=u.dtype, device=u.device)
        last = torch.empty(batch, d_inner, d_state, dtype=acc, device=u.device)
        dmy = torch.empty(1, dtype=acc, device=u.device)
        ckpt = torch.empty(batch, n_chunks, d_inner, d_state, dtype=acc, device=u.device) if store_ckpt else dmy
        h0c = None if h0 is None else h0.contiguous()
        zz = z if z is not None else u  # never read when HAS_Z is False; strides only
        kk = keep if keep is not None else dmy.view(1, 1)
        args = (
            u, delta, A, B, C,
            D if D is not None else dmy, zz, delta_bias if delta_bias is not None else dmy, kk,
            h0c if h0c is not None else dmy,
            y, last, ckpt,
            batch, d_inner, d_state, length, n_chunks,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *kk.stride(),
            *y.stride(),
        )
        consts = dict(
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_RESET=keep is not None, HAS_H0=h0 is not None,
            STORE_CKPT=store_ckpt, CHUNK=chunk, T_TILE=_next_pow2(chunk), BLOCK_N=max(2, _next_pow2(d_state)),
        )
        _launch(_scan_fwd_kernel, _fwd_tuned if not _interpreted() else None, batch, d_inner, block_d, args, consts)
        if store_ckpt:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, keep, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.chunk = chunk
        ctx.block_d = block_d
        ctx.has_h0 = h0 is not None
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, delta, A, B, C, D, z, delta_bias, keep, ckpt = ctx.saved_tensors
        batch, d_inner, length = u.shape
        d_state = A.shape[1]
        acc = ckpt.dtype
        chunk = ctx.chunk
        n_chunks = ckpt.shape[1]
        dev = u.device
        if grad_y is None:
            grad_y = torch.zeros(batch, d_inner, length, dtype=u.dtype, device=dev)

        du = torch.empty(batch, d_inner, length, dtype=u.dtype, device=dev)
        ddelta = torch.empty(batch, d_inner, length, dtype=delta.dtype, device=dev)
        dz = None if z is None else torch.empty(batch, d_inner, length, dtype=z.dtype, device=dev)
        dA = torch.empty(batch, d_inner, d_state, dtype=acc, device=dev)
        dB = torch.zeros(batch, d_state, length, dtype=acc, device=dev)
        dC = torch.zeros(batch, d_state, length, dtype=acc, device=dev)
        dD = None if D is None else torch.empty(batch, d_inner, dtype=acc, device=dev)
        dbias = None if delta_bias is None else torch.empty(batch, d_inner, dtype=acc, device=dev)
        dh0 = torch.empty(batch, d_inner, d_state, dtype=acc, device=dev) if ctx.has_h0 else None
        glast = None if grad_last is None else grad_last.contiguous()

        dmy = _dummy(ckpt)
        zz = z if z is not None else u
        kk = keep if keep is not None else dmy.view(1, 1)
        args = (
            u, delta, A, B, C,
            D if D is not None else dmy, zz, delta_bias if delta_bias is not None else dmy, kk,
            ckpt, grad_y, glast if glast is not None else dmy,
            du, ddelta, dz if dz is not None else dmy, dA, dB, dC,
            dD if dD is not None else dmy, dbias if dbias is not None else dmy, dh0 if dh0 is not None else dmy,
            batch, d_inner, d_state, length, n_chunks,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *kk.stride(),
            *grad_y.stride(),
        )
        consts = dict(
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, HAS_RESET=keep is not None, HAS_H0=ctx.has_h0,
            HAS_GLAST=glast is not None, CHUNK=chunk, T_TILE=_next_pow2(chunk), BLOCK_N=max(2, _next_pow2(d_state)),
        )
        _launch(_scan_bwd_kernel, _bwd_tuned if not _interpreted() else None, batch, d_inner, ctx.block_d, args, consts)
        gA = dA.sum(0).to(A.dtype)
        gB = dB.to(B.dtype)
        gC = dC.to(C.dtype)
        gD = None if dD is None else dD.sum(0).to(D.dtype)
        gbias = None if dbias is None else dbias.sum(0).to(delta_bias.dtype)
        gh0 = None if dh0 is None else dh0.to(ctx.h0_dtype)
        return du, ddelta, gA, gB, gC, gD, dz, gbias, None, gh0, None, None, None


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    reset: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
    chunk: int | None = None,
    block_d: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Triton reset-aware selective scan; same semantics as ``selective_scan(impl="loop")``.

    Returns ``y`` (batch, d_inner, L) in u's dtype, or ``(y, last_state)`` with the last state
    (batch, d_inner, d_state) in the accumulation dtype (float32; float64 for float64 inputs).
    ``chunk`` is the number of time steps scanned in parallel per tile and the checkpoint
    interval of the backward (default :func:`default_chunk`): memory is
    O(batch * d_inner * d_state * L / chunk) for the checkpoints, plus one tile per program.
    ``block_d`` (a power of two) fixes the channels per program instead of autotuning them.
    """
    _check_device(u, delta, A, B, C, D, z, delta_bias, reset, initial_state)
    length = u.shape[-1]
    if length == 0:
        raise ValueError("the Triton scan needs L >= 1")
    if chunk is not None and int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    keep = None if reset is None else (1.0 - reset.to(acc)).contiguous()
    y, last = _TritonSelectiveScan.apply(
        u, delta, A, B, C, D, z, delta_bias, keep, initial_state, delta_softplus, chunk, block_d
    )
    return (y, last) if return_last_state else y
