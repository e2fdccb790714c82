"""Triton kernels for the reset-aware selective scan (forward + recomputing backward).

    h_t = (1 - s_t) * exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t = C_t . h_t + D * u_t            (then y_t *= silu(z_t) when z is given)
    dt_t = softplus(delta_t + delta_bias) (bias and softplus optional)

Same argument layout and semantics as :func:`resel_train.ops.scan.selective_scan` (its ``"loop"``
reference): u, delta, z (batch, d_inner, L); A (d_inner, d_state); B, C (batch, d_state, L);
D, delta_bias (d_inner,); reset (batch, L); initial_state (batch, d_inner, d_state).

Layout of the work
- Forward: one program per (batch row, block of BLOCK_D channels). The (BLOCK_D, BLOCK_N) state
  tile lives in registers and is carried through a sequential loop over time. Every CHUNK steps
  the state entering the chunk is written to a checkpoint buffer (batch, n_chunks, d_inner,
  d_state); the full (batch, d_inner, L, d_state) state history is never materialised.
- Backward: the same program grid walks the chunks in reverse. For each chunk it recomputes the
  chunk's states forward from its checkpoint into a per-program scratch buffer of
  (CHUNK, BLOCK_D, BLOCK_N) (global memory sized by the chunk, not by L), then walks the chunk
  backwards in time carrying dL/dh. Gradients that are reductions across programs are written as
  per-program partials and summed with torch afterwards (deterministic, no atomics): A, D and
  delta_bias are summed over the batch rows, B and C over the channel blocks.
- Accumulation is float32 (float64 when the inputs are float64, which the tests use); outputs are
  cast back to the input dtypes; the returned last state is in the accumulation dtype, as in the
  PyTorch paths.

triton is an optional (GPU) dependency: this module is imported lazily by
``selective_scan(impl="triton")`` and nothing else in ``resel_train`` imports it. With
``TRITON_INTERPRET=1`` set *before* this module is imported, the kernels run in Triton's
interpreter on CPU tensors (how the tests exercise them).

Verification status: checked against the loop reference only in Triton's interpreter (no GPU was
available when this was written), plus an ahead-of-time compile of both kernels for sm_90
(TTIR -> PTX -> cubin) in the tests. Launch configuration (BLOCK_D, num_warps, chunk) is a
heuristic, not tuned on hardware.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["selective_scan_triton"]


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
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, keep_ptr, h0_ptr,
    y_ptr, last_ptr, ckpt_ptr,
    d_inner, d_state, L, n_chunks,
    s_ub, s_ud, s_ul,
    s_deb, s_ded, s_del,
    s_ad, s_an,
    s_bb, s_bn, s_bl,
    s_cb, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_kb, s_kl,
    s_yb, s_yd, s_yl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_RESET: tl.constexpr, HAS_H0: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    acc = ckpt_ptr.dtype.element_ty  # accumulation dtype (float32, or float64 for fp64 inputs)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # (batch, d_inner, d_state)-contiguous offsets of this program's tile (h0, last, checkpoints)
    tile = offs_d[:, None] * d_state + offs_n[None, :]
    state_stride = d_inner * d_state

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(acc)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * state_stride + tile, mask=mask_dn, other=0.0).to(acc)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=acc)

    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    de_row = delta_ptr + pid_b * s_deb + offs_d * s_ded
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    y_row = y_ptr + pid_b * s_yb + offs_d * s_yd
    B_row = B_ptr + pid_b * s_bb + offs_n * s_bn
    C_row = C_ptr + pid_b * s_cb + offs_n * s_cn
    keep_row = keep_ptr + pid_b * s_kb

    for c in range(n_chunks):
        start = c * CHUNK
        tl.store(ckpt_ptr + (pid_b * n_chunks + c) * state_stride + tile, h, mask=mask_dn)
        steps = tl.minimum(L - start, CHUNK)
        for i in range(steps):
            t = start + i
            uv = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(acc)
            dt = tl.load(de_row + t * s_del, mask=mask_d, other=0.0).to(acc)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            Bt = tl.load(B_row + t * s_bl, mask=mask_n, other=0.0).to(acc)
            Ct = tl.load(C_row + t * s_cl, mask=mask_n, other=0.0).to(acc)
            decay = tl.exp(dt[:, None] * A)
            if HAS_RESET:
                decay = decay * tl.load(keep_row + t * s_kl).to(acc)
            h = decay * h + (dt * uv)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
            if HAS_D:
                y = y + Dv * uv
            if HAS_Z:
                zv = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0).to(acc)
                y = y * (zv * _sigmoid(zv))
            tl.store(y_row + t * s_yl, y.to(y_ptr.dtype.element_ty), mask=mask_d)

    tl.store(last_ptr + pid_b * state_stride + tile, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, keep_ptr,
    ckpt_ptr, scratch_ptr, gy_ptr, glast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    d_inner, d_state, L, n_chunks, n_dblocks,
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
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Reverse-time scan. Outputs (all written with plain stores, every element exactly once):
    du, ddelta, dz: (batch, d_inner, L) contiguous, input dtypes;
    dA: (batch, d_inner, d_state) partials, summed over batch afterwards;
    dB, dC: (batch, n_dblocks, L, d_state) partials, summed over channel blocks afterwards;
    dD, dbias: (batch, d_inner) partials; dh0: (batch, d_inner, d_state).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    acc = ckpt_ptr.dtype.element_ty

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    tile = offs_d[:, None] * d_state + offs_n[None, :]
    state_stride = d_inner * d_state

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(acc)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    # g: dLoss/dh_t flowing in from the future (starts as the gradient of the last state)
    if HAS_GLAST:
        g = tl.load(glast_ptr + pid_b * state_stride + tile, mask=mask_dn, other=0.0).to(acc)
    else:
        g = tl.zeros([BLOCK_D, BLOCK_N], dtype=acc)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=acc)
    dD_acc = tl.zeros([BLOCK_D], dtype=acc)
    dbias_acc = tl.zeros([BLOCK_D], dtype=acc)

    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    de_row = delta_ptr + pid_b * s_deb + offs_d * s_ded
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    gy_row = gy_ptr + pid_b * s_gb + offs_d * s_gd
    B_row = B_ptr + pid_b * s_bb + offs_n * s_bn
    C_row = C_ptr + pid_b * s_cb + offs_n * s_cn
    keep_row = keep_ptr + pid_b * s_kb
    out_row = pid_b * d_inner * L + offs_d * L  # du / ddelta / dz are (batch, d_inner, L) contiguous
    part_row = (pid_b * n_dblocks + pid_d) * L * d_state + offs_n  # dB / dC partials
    # this program's private scratch: (CHUNK, BLOCK_D, BLOCK_N), always fully in bounds
    tile_elems = BLOCK_D * BLOCK_N
    scratch = (
        scratch_ptr
        + (pid_b * n_dblocks + pid_d) * (CHUNK * tile_elems)
        + tl.arange(0, BLOCK_D)[:, None] * BLOCK_N
        + offs_n[None, :]
    )

    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        start = c * CHUNK
        steps = tl.minimum(L - start, CHUNK)
        h_start = tl.load(ckpt_ptr + (pid_b * n_chunks + c) * state_stride + tile, mask=mask_dn, other=0.0)
        # 1) recompute h_start+1 .. h_end of this chunk into scratch
        h = h_start
        for i in range(steps):
            t = start + i
            uv = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(acc)
            dt = tl.load(de_row + t * s_del, mask=mask_d, other=0.0).to(acc)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            Bt = tl.load(B_row + t * s_bl, mask=mask_n, other=0.0).to(acc)
            decay = tl.exp(dt[:, None] * A)
            if HAS_RESET:
                decay = decay * tl.load(keep_row + t * s_kl).to(acc)
            h = decay * h + (dt * uv)[:, None] * Bt[None, :]
            tl.store(scratch + i * tile_elems, h)
        tl.debug_barrier()
        # 2) walk the chunk backwards in time
        for j in range(steps):
            i = steps - 1 - j
            t = start + i
            h_t = tl.load(scratch + i * tile_elems)
            h_prev = tl.load(scratch + tl.maximum(i - 1, 0) * tile_elems)
            h_prev = tl.where(i > 0, h_prev, h_start)

            uv = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(acc)
            dt_raw = tl.load(de_row + t * s_del, mask=mask_d, other=0.0).to(acc)
            if HAS_BIAS:
                dt_raw = dt_raw + bias
            if SOFTPLUS:
                dt = _softplus(dt_raw)
            else:
                dt = dt_raw
            Bt = tl.load(B_row + t * s_bl, mask=mask_n, other=0.0).to(acc)
            Ct = tl.load(C_row + t * s_cl, mask=mask_n, other=0.0).to(acc)
            decay = tl.exp(dt[:, None] * A)
            if HAS_RESET:
                decay = decay * tl.load(keep_row + t * s_kl).to(acc)
            gy = tl.load(gy_row + t * s_gl, mask=mask_d, other=0.0).to(acc)

            if HAS_Z:
                y_pre = tl.sum(h_t * Ct[None, :], axis=1)
                if HAS_D:
                    y_pre = y_pre + Dv * uv
                zv = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0).to(acc)
                sz = _sigmoid(zv)
                dz = gy * y_pre * sz * (1.0 + zv * (1.0 - sz))
                tl.store(dz_ptr + out_row + t, dz.to(dz_ptr.dtype.element_ty), mask=mask_d)
                gy = gy * (zv * sz)
            if HAS_D:
                dD_acc += gy * uv
                du = gy * Dv
            else:
                du = tl.zeros([BLOCK_D], dtype=acc)

            g = g + gy[:, None] * Ct[None, :]  # dLoss/dh_t
            dC_t = tl.sum(gy[:, None] * h_t, axis=0)
            dtu = dt * uv
            dB_t = tl.sum(g * dtu[:, None], axis=0)
            tl.store(dC_ptr + part_row + t * d_state, dC_t, mask=mask_n)
            tl.store(dB_ptr + part_row + t * d_state, dB_t, mask=mask_n)
            d_dtu = tl.sum(g * Bt[None, :], axis=1)
            du += d_dtu * dt
            # d decay / d(dt * A) = decay (the reset factor is a constant)
            g_log = g * decay * h_prev
            d_dt = d_dtu * uv + tl.sum(g_log * A, axis=1)
            dA_acc += g_log * dt[:, None]
            if SOFTPLUS:
                d_dt = d_dt * _softplus_grad(dt_raw)
            if HAS_BIAS:
                dbias_acc += d_dt
            tl.store(du_ptr + out_row + t, du.to(du_ptr.dtype.element_ty), mask=mask_d)
            tl.store(ddelta_ptr + out_row + t, d_dt.to(ddelta_ptr.dtype.element_ty), mask=mask_d)
            g = g * decay  # dLoss/dh_{t-1} through this step
        tl.debug_barrier()  # the next chunk overwrites the scratch

    tl.store(dA_ptr + pid_b * state_stride + tile, dA_acc, mask=mask_dn)
    if HAS_H0:
        tl.store(dh0_ptr + pid_b * state_stride + tile, g, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * d_inner + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * d_inner + offs_d, dbias_acc, mask=mask_d)


# ----------------------------------------------------------------------------------------------
# launch helpers


def _interpreted() -> bool:
    """True when the kernels were built for Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return not isinstance(_scan_fwd_kernel, triton.runtime.JITFunction)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def default_chunk(length: int) -> int:
    """~sqrt(L) (power of two in [16, 128]): balances checkpoint memory against scratch memory."""
    return min(128, max(16, _next_pow2(math.isqrt(max(1, length)))))


def _blocks(
    batch: int, d_inner: int, d_state: int, device: torch.device, max_tile: int, block_d: int | None = None
) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps). Unless ``block_d`` is given: a tile of at most ``max_tile``
    elements, shrunk further (down to 4 channels) while the grid would leave SMs idle."""
    block_n = max(2, _next_pow2(d_state))
    if block_d is not None:
        if block_d < 1 or block_d & (block_d - 1):
            raise ValueError(f"block_d must be a power of two; got {block_d}")
    else:
        block_d = max(1, min(_next_pow2(d_inner), max_tile // block_n))
        if device.type == "cuda":
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            while block_d > 4 and batch * triton.cdiv(d_inner, block_d) < 2 * sms:
                block_d //= 2
    tile = block_d * block_n
    # ~4 tile elements per thread: the backward holds about six tiles live per step. An AOT build
    # for sm_90 (ptxas -v, fp32, d_state 64) gave 72-106 registers (fwd) and 144-187 (bwd), no
    # spills, at that density; 8 elements per thread pushed the backward to 255 with spills.
    num_warps = min(8, max(1, tile // 128))
    return block_d, block_n, num_warps


def _check_device(*tensors: Tensor | None) -> None:
    device = tensors[0].device
    for t in tensors:
        if t is not None and t.device != device:
            raise ValueError(f"all inputs must be on one device; got {device} and {t.device}")
    if device.type != "cuda" and not _interpreted():
        raise RuntimeError(
            "the Triton scan needs CUDA tensors (or TRITON_INTERPRET=1 set before "
            "resel_train.ops.triton_scan is imported, to run it on the CPU); use impl='parallel'"
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
        chunk = default_chunk(length) if chunk is None else int(chunk)
        n_chunks = triton.cdiv(length, chunk)
        ctx.block_d = block_d
        block_d, block_n, num_warps = _blocks(batch, d_inner, d_state, u.device, 2048, block_d)

        y = torch.empty(batch, d_inner, length, dtype=u.dtype, device=u.device)
        last = torch.empty(batch, d_inner, d_state, dtype=acc, device=u.device)
        ckpt = torch.empty(batch, n_chunks, d_inner, d_state, dtype=acc, device=u.device)
        h0c = None if h0 is None else h0.contiguous()
        dmy = _dummy(u)
        zz = z if z is not None else u  # never read when HAS_Z is False; strides only
        kk = keep if keep is not None else dmy.view(1, 1)

        grid = (batch, triton.cdiv(d_inner, block_d))
        _scan_fwd_kernel[grid](
            u, delta, A, B, C,
            D if D is not None else dmy, zz, delta_bias if delta_bias is not None else dmy, kk,
            h0c if h0c is not None else dmy,
            y, last, ckpt,
            d_inner, d_state, length, n_chunks,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *kk.stride(),
            *y.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_RESET=keep is not None, HAS_H0=h0 is not None,
            CHUNK=chunk, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=num_warps,
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, keep, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.chunk = chunk
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
        block_d, block_n, num_warps = _blocks(batch, d_inner, d_state, u.device, 1024, ctx.block_d)
        n_dblocks = triton.cdiv(d_inner, block_d)
        dev = u.device
        if grad_y is None:
            grad_y = torch.zeros(batch, d_inner, length, dtype=u.dtype, device=dev)

        du = torch.empty(batch, d_inner, length, dtype=u.dtype, device=dev)
        ddelta = torch.empty(batch, d_inner, length, dtype=delta.dtype, device=dev)
        dz = None if z is None else torch.empty(batch, d_inner, length, dtype=z.dtype, device=dev)
        dA = torch.empty(batch, d_inner, d_state, dtype=acc, device=dev)
        dB = torch.empty(batch, n_dblocks, length, d_state, dtype=acc, device=dev)
        dC = torch.empty(batch, n_dblocks, length, d_state, dtype=acc, device=dev)
        dD = None if D is None else torch.empty(batch, d_inner, dtype=acc, device=dev)
        dbias = None if delta_bias is None else torch.empty(batch, d_inner, dtype=acc, device=dev)
        dh0 = torch.empty(batch, d_inner, d_state, dtype=acc, device=dev) if ctx.has_h0 else None
        scratch = torch.empty(batch * n_dblocks * chunk * block_d * block_n, dtype=acc, device=dev)
        glast = None if grad_last is None else grad_last.contiguous()

        dmy = _dummy(ckpt)
        zz = z if z is not None else u
        kk = keep if keep is not None else dmy.view(1, 1)
        grid = (batch, n_dblocks)
        _scan_bwd_kernel[grid](
            u, delta, A, B, C,
            D if D is not None else dmy, zz, delta_bias if delta_bias is not None else dmy, kk,
            ckpt, scratch, grad_y, glast if glast is not None else dmy,
            du, ddelta, dz if dz is not None else dmy, dA, dB, dC,
            dD if dD is not None else dmy, dbias if dbias is not None else dmy, dh0 if dh0 is not None else dmy,
            d_inner, d_state, length, n_chunks, n_dblocks,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zz.stride(), *kk.stride(),
            *grad_y.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, HAS_RESET=keep is not None, HAS_H0=ctx.has_h0,
            HAS_GLAST=glast is not None,
            CHUNK=chunk, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=num_warps,
        )
        gA = dA.sum(0).to(A.dtype)
        gB = dB.sum(1).transpose(1, 2).to(B.dtype)
        gC = dC.sum(1).transpose(1, 2).to(C.dtype)
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
    ``chunk`` is the checkpoint interval of the backward (default ~sqrt(L), see
    :func:`default_chunk`): memory is O(batch * d_inner * d_state * (L / chunk + chunk)).
    ``block_d`` (a power of two) overrides the channels per program (tuning and tests).
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
