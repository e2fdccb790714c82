"""Reset-aware selective scan: the recurrence at the core of the Mamba context encoder.

    h_t = (1 - s_t) * exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t = C_t . h_t + D * u_t            (then y_t *= silu(z_t) when z is given)

``s_t`` is 1 at the first step of every trajectory, so trajectories stacked in one row never
share memory. One entry point, :func:`selective_scan`, with mamba-ssm's argument layout
(u, delta: (batch, d_inner, L); A: (d_inner, d_state); B, C: (batch, d_state, L)) and three
implementations:

- ``"loop"``: a plain per-step loop with autograd. The reference for tests; float64-capable.
- ``"parallel"``: the default off-GPU. Every element-wise quantity (exp(dt*A), dt*B*u, the
  output contraction) is computed for a whole time chunk at once, and the state is carried
  through the chunk with one fused in-place ``addcmul`` per step (the work-optimal order on a
  CPU, where a log-depth scan would do ~log2(L) times more element-wise work). A custom
  backward recomputes each chunk from a saved boundary state, so memory is
  O(chunk * batch * d_inner * d_state), never the whole (batch, d_inner, L, d_state) tensor.
- ``"cuda"``: mamba-ssm's fused kernel. It has no reset and no initial-state input, so it is
  only used when neither is given; asking for it with resets raises instead of silently
  ignoring them. ``"auto"`` on CUDA picks our Triton kernel when triton is installed (it takes
  resets), then mamba-ssm for reset-free calls, then the PyTorch path.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLEMENTATIONS = ("auto", "loop", "parallel", "cuda", "triton")

# Target number of (batch * d_inner * d_state) elements held per chunk buffer: large enough that
# chunk-wide ops amortise dispatch, small enough that the four chunk buffers stay cache-friendly.
_CHUNK_ELEMENTS = 1 << 20


def selective_scan(
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
    impl: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the reset-aware selective scan; returns ``y`` (batch, d_inner, L) and optionally the last state.

    ``reset`` (batch, L) is 1/True at the first step of a trajectory; ``initial_state``
    (batch, d_inner, d_state) is the state before step 0 (zero when omitted).
    """
    _check_shapes(u, delta, A, B, C, reset, initial_state)
    impl = _resolve_impl(impl, u, reset, initial_state)
    if impl == "cuda":
        return _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if impl == "triton":
        from resel_train.ops.triton_scan import selective_scan_triton

        return selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reset, initial_state, return_last_state
        )

    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    keep = None if reset is None else 1.0 - reset.to(compute)
    h0 = None if initial_state is None else initial_state.to(compute)

    if impl == "loop":
        y, last = _scan_loop(u, delta, A, B, C, keep, h0)
    else:
        y, last = _ChunkedScan.apply(u, delta, A, B, C, keep, h0)

    if D is not None:
        y = y + u * D.to(compute)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y


def _check_shapes(u, delta, A, B, C, reset, initial_state) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, d_inner, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, d_inner, length = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be (d_inner={d_inner}, d_state); got {tuple(A.shape)}")
    d_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, d_state, length):
            raise ValueError(
                f"{name} must be (batch, d_state, L) = {(batch, d_state, length)}; got {tuple(t.shape)} "
                "(input-independent or grouped B/C are not supported)"
            )
    if reset is not None and reset.shape != (batch, length):
        raise ValueError(f"reset must be (batch, L) = {(batch, length)}; got {tuple(reset.shape)}")
    if initial_state is not None and initial_state.shape != (batch, d_inner, d_state):
        raise ValueError(
            f"initial_state must be (batch, d_inner, d_state) = {(batch, d_inner, d_state)}; "
            f"got {tuple(initial_state.shape)}"
        )


def _resolve_impl(impl: str, u: Tensor, reset: Tensor | None, initial_state: Tensor | None) -> str:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}; got {impl!r}")
    has_extras = reset is not None or initial_state is not None
    if impl == "cuda":
        if not u.is_cuda:
            raise ValueError("impl='cuda' needs CUDA tensors; use impl='parallel' on the CPU")
        if has_extras:
            raise ValueError(
                "mamba-ssm's Mamba-1 kernel takes no reset or initial state; use impl='triton' "
                "(pip install 'resel[triton]') or impl='parallel' for reset-aware scans"
            )
        _require_mamba_ssm()
    if impl == "triton" and importlib.util.find_spec("triton") is None:
        raise ImportError("impl='triton' needs triton: pip install 'resel[triton]' (CUDA machine)")
    if impl != "auto":
        return impl
    if u.is_cuda:
        if importlib.util.find_spec("triton") is not None:
            return "triton"
        if not has_extras and importlib.util.find_spec("mamba_ssm") is not None:
            return "cuda"
    return "parallel"


def _require_mamba_ssm() -> None:
    if importlib.util.find_spec("mamba_ssm") is None:
        raise ImportError(
            "impl='cuda' needs mamba-ssm on a CUDA machine: "
            "pip install 'resel[mamba]' --no-build-isolation (see README, GPU install)"
        )


def _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=return_last_state
    )


def _scan_loop(u, delta, A, B, C, keep, h0) -> tuple[Tensor, Tensor]:
    """Reference: one step at a time, exactly the recurrence in the module docstring."""
    batch, d_inner, length = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        if keep is not None:
            decay = decay * keep[:, t, None, None]
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1), h


def _chunk_len(batch: int, d_inner: int, d_state: int, length: int) -> int:
    return max(1, min(length, _CHUNK_ELEMENTS // max(1, batch * d_inner * d_state)))


def _chunk_terms(dt, dtu, A, Bc, keep_c):
    """exp(dt*A) (reset-masked) and dt*u*B for one chunk, both (T, batch, d_inner, d_state)."""
    decay = torch.exp(dt[..., None] * A)
    if keep_c is not None:
        decay.mul_(keep_c[:, :, None, None])
    drive = dtu[..., None] * Bc[:, :, None, :]
    return decay, drive


def _walk(decay: Tensor, states: Tensor, h_prev: Tensor) -> None:
    """In place: ``states`` holds dt*B*u on entry and h_t on exit (one fused op per step)."""
    steps, decays = states.unbind(0), decay.unbind(0)  # one op for all views; indexing per step costs more
    steps[0].addcmul_(decays[0], h_prev)
    for t in range(1, len(steps)):
        steps[t].addcmul_(decays[t], steps[t - 1])


class _ChunkedScan(torch.autograd.Function):
    """Chunked scan with a recomputing backward (inputs already bias/softplus-processed)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, keep, h0):
        batch, d_inner, length = u.shape
        d_state = A.shape[1]
        chunk = _chunk_len(batch, d_inner, d_state, length)
        # time-major copies so each step's slice is contiguous
        dt_t = delta.permute(2, 0, 1).contiguous()
        dtu_t = (delta * u).permute(2, 0, 1).contiguous()
        B_t = B.permute(2, 0, 1).contiguous()
        C_t = C.permute(2, 0, 1).contiguous()
        keep_t = None if keep is None else keep.t().contiguous()
        h = u.new_zeros(batch, d_inner, d_state) if h0 is None else h0
        y_t = u.new_empty(length, batch, d_inner)
        boundaries = u.new_empty(-(-length // chunk), batch, d_inner, d_state)  # state entering each chunk
        for idx, start in enumerate(range(0, length, chunk)):
            stop = min(start + chunk, length)
            boundaries[idx] = h
            kc = None if keep_t is None else keep_t[start:stop]
            decay, states = _chunk_terms(dt_t[start:stop], dtu_t[start:stop], A, B_t[start:stop], kc)
            _walk(decay, states, h)
            y_t[start:stop] = torch.matmul(states, C_t[start:stop, :, :, None]).squeeze(-1)
            h = states[-1]
        ctx.chunk = chunk
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(u, delta, A, dt_t, dtu_t, B_t, C_t, keep_t, boundaries)
        return y_t.permute(1, 2, 0), h.clone()

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, delta, A, dt_t, dtu_t, B_t, C_t, keep_t, boundaries = ctx.saved_tensors
        length, batch, d_inner = dt_t.shape
        chunk = ctx.chunk
        gy_t = grad_y.permute(2, 0, 1).contiguous()  # else g_h inherits a layout that splits each step's slice
        carry = torch.zeros_like(boundaries[0]) if grad_last is None else grad_last.clone()
        g_dt = torch.empty_like(dt_t)
        g_dtu = torch.empty_like(dt_t)
        g_B = torch.empty_like(B_t)
        g_C = torch.empty_like(C_t)
        g_A = torch.zeros_like(A)
        starts = list(range(0, length, chunk))
        for idx in reversed(range(len(starts))):
            start, stop = starts[idx], min(starts[idx] + chunk, length)
            h_prev = boundaries[idx]
            kc = None if keep_t is None else keep_t[start:stop]
            decay, states = _chunk_terms(dt_t[start:stop], dtu_t[start:stop], A, B_t[start:stop], kc)
            _walk(decay, states, h_prev)
            gy = gy_t[start:stop]
            g_C[start:stop] = torch.matmul(gy[:, :, None, :], states).squeeze(-2)
            # grad w.r.t. h_t: output term plus what flows back through the next decay
            g_h = gy[..., None] * C_t[start:stop, :, None, :]
            g_h[-1].add_(carry)
            grads, decays = g_h.unbind(0), decay.unbind(0)
            for t in range(len(grads) - 2, -1, -1):
                grads[t].addcmul_(decays[t + 1], grads[t + 1])
            carry = decay[0] * g_h[0]
            g_dtu[start:stop] = torch.matmul(g_h, B_t[start:stop, :, :, None]).squeeze(-1)
            g_B[start:stop] = torch.matmul(dtu_t[start:stop, :, None, :], g_h).squeeze(-2)
            # g_h becomes, in place, the grad w.r.t. log decay: g_h_t * h_{t-1} * decay_t
            g_h[1:].mul_(states[:-1])
            g_h[0].mul_(h_prev)
            g_log_decay = g_h.mul_(decay)
            g_dt[start:stop] = torch.einsum("tbdn,dn->tbd", g_log_decay, A)
            g_A += g_log_decay.mul_(dt_t[start:stop, :, :, None]).sum((0, 1))  # einsum here copies: 4x slower
        g_dtu = g_dtu.permute(1, 2, 0)
        g_u = g_dtu * delta
        g_delta = g_dt.permute(1, 2, 0) + g_dtu * u
        g_h0 = carry if ctx.has_h0 else None
        return g_u, g_delta, g_A, g_B.permute(1, 2, 0), g_C.permute(1, 2, 0), None, g_h0
