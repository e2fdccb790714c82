"""Reset-aware selective scan: the recurrence at the core of the Mamba context encoder.

    h_t = (1 - s_t) * exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t = C_t . h_t + D * u_t            (then y_t *= silu(z_t) when z is given)

``s_t`` is 1 at the first step of every trajectory, so trajectories stacked in one row never
share memory. One entry point, :func:`selective_scan`, with mamba-ssm's argument layout
(u, delta: (batch, d_inner, L); A: (d_inner, d_state); B, C: (batch, d_state, L)) and these
implementations:

- ``"loop"``: a plain per-step loop with autograd. The reference for tests; float64-capable.
- ``"cpu"``: the default off-GPU for float32: a small C kernel (``cpu_ops.c``, built on first
  use, see ``cpu_kernel``) that walks each (batch, channel) row once with its state in registers,
  forward and a recomputing backward.
- ``"parallel"``: pure PyTorch, used off-GPU for float64 or when no C compiler is available.
  Every element-wise quantity (exp(dt*A), dt*B*u, the output contraction) is computed for a
  whole time chunk at once; the state is carried through
  the chunk by a two-level walk (all sqrt-sized blocks of the chunk advanced together, then one
  pass that hands each block its predecessor's end state), so a chunk of T steps costs
  ~sqrt(8T) small ops instead of T, or by a plain one-op-per-step walk when a step's slice is
  large enough that dispatch no longer matters. A custom backward recomputes each chunk from a
  saved boundary state, so memory is O(chunk * batch * d_inner * d_state), never the whole
  (batch, d_inner, L, d_state) tensor; the chunk buffers are reused across calls.
- ``"cuda"``: mamba-ssm's fused kernel. It has no reset and no initial-state input, so it is
  only used when neither is given; asking for it with resets raises instead of silently
  ignoring them. ``"auto"`` on CUDA picks our Triton kernel when triton is installed (it takes
  resets), then mamba-ssm for reset-free calls, then the PyTorch path.
"""

from __future__ import annotations

import importlib.util
import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from resel_deploy.extras import install_hint
from resel_train.ops import cpu_kernel

IMPLEMENTATIONS = ("auto", "loop", "parallel", "cpu", "cuda", "triton")

# Target number of (batch * d_inner * d_state) elements held per chunk buffer: large enough that
# chunk-wide ops amortise dispatch, small enough that the four chunk buffers stay cache-friendly.
_CHUNK_ELEMENTS = 1 << 20
# Largest per-step slice (batch * d_inner * d_state) for which the two-level walk beats a plain one.
_TWO_LEVEL_MAX_ELEMENTS = 1 << 13
_LOG2E = math.log2(math.e)


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
    if impl == "cpu":  # the kernel applies the delta bias and softplus, the D skip and the z gate itself
        f32 = lambda t: t if t is None or t.dtype == torch.float32 else t.float()  # noqa: E731
        y, last = _KernelScan.apply(*(f32(t) for t in (u, delta, A, B, C, D, z, delta_bias)), delta_softplus,
                                    cpu_kernel.as_bool(reset), f32(initial_state))
        y = y if y.dtype == dtype_in else y.to(dtype_in)
        return (y, last) if return_last_state else y
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    reset = cpu_kernel.as_bool(reset)
    h0 = None if initial_state is None else initial_state.to(compute)

    if impl == "loop":
        y, last = _scan_loop(u, delta, A, B, C, reset, h0)
    else:
        y, last = _ChunkedScan.apply(u, delta, A, B, C, reset, h0)

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
                f"({install_hint('triton')}) or impl='parallel' for reset-aware scans"
            )
        _require_mamba_ssm()
    if impl == "cpu" and (u.is_cuda or u.dtype == torch.float64 or cpu_kernel.load() is None):
        raise ValueError("impl='cpu' needs float32 CPU tensors and a C compiler (cc); use impl='parallel'")
    if impl == "triton" and importlib.util.find_spec("triton") is None:
        raise ImportError(f"impl='triton' needs triton: {install_hint('triton')}")
    if impl != "auto":
        return impl
    if u.is_cuda:
        if importlib.util.find_spec("triton") is not None:
            return "triton"
        if not has_extras and importlib.util.find_spec("mamba_ssm") is not None:
            return "cuda"
    if not u.is_cuda and u.dtype != torch.float64 and cpu_kernel.load() is not None:
        return "cpu"
    return "parallel"


def _require_mamba_ssm() -> None:
    if importlib.util.find_spec("mamba_ssm") is None:
        raise ImportError(f"impl='cuda' needs mamba-ssm on a CUDA machine: {install_hint('mamba')}")


def _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=return_last_state
    )


def _scan_loop(u, delta, A, B, C, reset, h0) -> tuple[Tensor, Tensor]:
    """Reference: one step at a time, exactly the recurrence in the module docstring."""
    batch, d_inner, length = u.shape
    keep = None if reset is None else 1.0 - reset.to(u.dtype)
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


def _block_len(steps: int, step_elements: int) -> int:
    """Sub-block length of the two-level walk over a chunk of ``steps`` steps (``steps``: a plain walk).

    A plain walk costs one op per step; the two-level walk ~sqrt(8 * steps) ops for two more passes
    over the chunk. One op costs ~1.5 us of dispatch and a pass ~0.2 ns per element on a 1-thread
    CPU, so the two-level walk only pays when a step's slice is small.
    """
    if step_elements > _TWO_LEVEL_MAX_ELEMENTS or steps < 8:
        return steps
    return math.isqrt(2 * steps)


def _linear_scan_(buf: Tensor, links: Tensor, block: int, reverse: bool) -> None:
    """In place over ``x = buf[0]`` (T, *S), T a multiple of ``block``: x_{t+1} += links_t * x_t.

    ``reverse``: x_t += links_t * x_{t+1} instead. ``links`` (T, *S) joins step t to step t + 1.
    With ``block < T`` the walk has two levels: every block of ``block`` steps is walked at once
    (one op per in-block step, over all blocks), ``buf[1]`` (scratch) carries the products of the
    links inside each block alongside, then one short walk over the blocks passes each block's
    end state on, and a single fused op adds it, decayed, to every step of the next block.
    """
    blocks = links.shape[0] // block
    z = buf.view(buf.shape[0], blocks, block, *buf.shape[2:])
    link = links.view(blocks, block, *links.shape[1:])
    entry = block - 1 if reverse else 0  # where a block receives what the neighbouring block passes on
    if blocks > 1:
        z[1].zero_()
        z[1, :, entry].fill_(1.0)
    zs, ls = z.unbind(2), link.unbind(1)  # one op for all per-step views
    if reverse:
        for j in range(block - 2, -1, -1):
            zs[j].addcmul_(ls[j], zs[j + 1])
    else:
        for j in range(1, block):
            zs[j].addcmul_(ls[j - 1], zs[j - 1])
    if blocks == 1:
        return
    x, gain = z[0], z[1]  # gain[c, j]: how much of what block c receives reaches its step j
    exit_ = 0 if reverse else block - 1
    order = range(blocks - 2, -1, -1) if reverse else range(1, blocks)
    src = (lambda c: c + 1) if reverse else (lambda c: c - 1)
    received = torch.zeros_like(x[:, 0])  # (blocks, *S): input to each block from its neighbour
    x_exit, gain_exit = x[:, exit_].unbind(0), gain[:, exit_].unbind(0)
    cross = link[:, block - 1].unbind(0)  # link from block c's last step to block c + 1's first
    recv = received.unbind(0)
    for c in order:
        s = src(c)
        out = torch.addcmul(x_exit[s], gain_exit[s], recv[s])  # final value at the sender's exit step
        torch.mul(cross[min(c, s)], out, out=recv[c])
    rest = slice(0, blocks - 1) if reverse else slice(1, blocks)
    x[rest].addcmul_(gain[rest], received[rest, None])


class _ChunkedScan(torch.autograd.Function):
    """Chunked scan with a recomputing backward (inputs already bias/softplus-processed).

    State-sized buffers are time-major (T, batch, d_state, d_inner): d_inner, the longest axis,
    is contiguous, so the contractions over d_state (the output, grad dt*u, grad dt) are batched
    vector-matrix products and sums over a middle axis, both of which run at memory speed.
    Decays are exp2 of dt * A * log2(e) (exp2 is ~2x faster than exp on CPUs) and a reset zeroes
    its step's decay by an indexed write that touches only the reset slices.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, reset, h0):
        batch, d_inner, length = u.shape
        d_state = A.shape[1]
        chunk = _chunk_len(batch, d_inner, d_state, length)
        dt_t = delta.permute(2, 0, 1).contiguous()  # (L, b, d)
        dtu_t = (delta * u).permute(2, 0, 1).contiguous()
        B_t = B.permute(2, 0, 1).contiguous()  # (L, b, n)
        C_t = C.permute(2, 0, 1).contiguous()
        reset_t = None if reset is None else reset.t().contiguous()
        A2 = (A * _LOG2E).t().contiguous()  # (n, d)
        h = u.new_zeros(batch, d_state, d_inner) if h0 is None else h0.transpose(1, 2).contiguous()
        y_t = u.new_empty(length, batch, d_inner)
        boundaries = u.new_empty(-(-length // chunk), batch, d_state, d_inner)  # state entering each chunk
        for idx, start in enumerate(range(0, length, chunk)):
            stop = min(start + chunk, length)
            boundaries[idx] = h
            decay, buf, block = _chunk_states(dt_t, dtu_t, A2, B_t, reset_t, start, stop, h)
            states = buf[0, : stop - start]
            torch.matmul(C_t[start:stop, :, None, :], states, out=y_t[start:stop, :, None, :])
            h = states[-1].clone()  # the workspace is overwritten by the next chunk
        ctx.chunk = chunk
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(u, delta, A, A2, dt_t, dtu_t, B_t, C_t, reset_t, boundaries)
        return y_t.permute(1, 2, 0), h.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, delta, A, A2, dt_t, dtu_t, B_t, C_t, reset_t, boundaries = ctx.saved_tensors
        length, batch, d_inner = dt_t.shape
        chunk = ctx.chunk
        gy_t = grad_y.permute(2, 0, 1).contiguous()
        carry = None if grad_last is None else grad_last.transpose(1, 2)  # grad w.r.t. the chunk's last state
        g_dtu = torch.empty_like(dt_t)
        g_dt = torch.empty_like(dt_t)
        g_B = torch.empty_like(B_t)
        g_C = torch.empty_like(C_t)
        g_A = torch.zeros_like(A2)
        A_t = A.t()
        starts = list(range(0, length, chunk))
        for idx in reversed(range(len(starts))):
            start, stop = starts[idx], min(starts[idx] + chunk, length)
            steps = stop - start
            h_prev = boundaries[idx]
            decay, buf, block = _chunk_states(dt_t, dtu_t, A2, B_t, reset_t, start, stop, h_prev)
            states = buf[0, :steps]
            gy = gy_t[start:stop]
            scratch = _workspace("scratch", states.shape, states)
            torch.sum(torch.mul(states, gy[:, :, None, :], out=scratch), dim=-1, out=g_C[start:stop])
            # grad w.r.t. h_t: the output's term, then what flows back through the next step's decay
            g_buf = _workspace("grads", buf.shape, buf)
            g_h = g_buf[0]
            torch.mul(C_t[start:stop, :, :, None], gy[:, :, None, :], out=g_h[:steps])
            g_h[steps:].zero_()
            if carry is not None:
                g_h[steps - 1].add_(carry)
            _linear_scan_(g_buf, decay[1:], block, reverse=True)
            g_h = g_h[:steps]
            carry = decay[0] * g_h[0]
            torch.matmul(B_t[start:stop, :, None, :], g_h, out=g_dtu[start:stop, :, None, :])
            torch.sum(torch.mul(g_h, dtu_t[start:stop, :, None, :], out=scratch), dim=-1, out=g_B[start:stop])
            # g_h becomes, in place, the grad w.r.t. the log decay: g_h_t * h_{t-1} * decay_t
            g_h[1:].mul_(states[:-1])
            g_h[0].mul_(h_prev)
            g_log_decay = g_h.mul_(decay[:steps])
            torch.sum(torch.mul(g_log_decay, A_t, out=scratch), dim=2, out=g_dt[start:stop])
            g_A += g_log_decay.mul_(dt_t[start:stop, :, None, :]).sum((0, 1))
        g_dtu = g_dtu.permute(1, 2, 0)
        g_u = g_dtu * delta
        g_delta = g_dt.permute(1, 2, 0) + g_dtu * u
        g_h0 = carry.transpose(1, 2) if ctx.has_h0 else None
        return g_u, g_delta, g_A.t(), g_B.permute(1, 2, 0), g_C.permute(1, 2, 0), None, g_h0


class _KernelScan(torch.autograd.Function):
    """The compiled CPU kernel (``cpu_kernel``): one pass per block of 16 channels, state in registers. The
    element-wise work around the scan (delta bias and softplus before it, the D skip and z gate after it) is
    one compiled pass each way too, where PyTorch ops would be ~16 small ops per forward and backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reset, h0):
        lib = cpu_kernel.load()
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        z = None if z is None else z.contiguous()
        B_l, C_l = cpu_kernel.step_rows(B.transpose(1, 2)), cpu_kernel.step_rows(C.transpose(1, 2))  # (b, L, n)
        reset = None if reset is None else reset.contiguous()
        h0 = None if h0 is None else h0.contiguous()
        out, last, dt, y_pre = cpu_kernel.gated_scan_forward(lib, u, delta, A, B_l, C_l, D, z, delta_bias, delta_softplus,
                                                             reset, h0, keep=any(ctx.needs_input_grad))
        ctx.save_for_backward(u, delta, dt, A, B_l, C_l, D, z, delta_bias, y_pre, reset, h0)
        ctx.delta_softplus = delta_softplus
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, dt, A, B_l, C_l, D, z, delta_bias, y_pre, reset, h0 = ctx.saved_tensors
        lib = cpu_kernel.load()
        du, g_delta, dA, dB, dC, g_D, g_z, g_bias, dh0 = cpu_kernel.gated_scan_backward(
            lib, u, delta, dt, A, B_l, C_l, D, z, delta_bias, ctx.delta_softplus, y_pre, reset, h0,
            grad_out.contiguous(), None if grad_last is None else grad_last.contiguous())
        return du, g_delta, dA, dB.transpose(1, 2), dC.transpose(1, 2), g_D, g_z, g_bias, None, None, dh0


_WORKSPACES = threading.local()


def _workspace(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A scratch tensor of ``shape`` reused across calls (uninitialised).

    The chunk buffers are megabytes each and allocated several times per update; fresh allocations
    of that size come from the OS and are page-faulted in on first touch, which costs as much as the
    arithmetic on them. Per thread, so concurrent scans never share one, and per inference mode
    (a tensor made under ``torch.inference_mode`` cannot be written outside it).
    """
    cache = _WORKSPACES.__dict__
    numel = math.prod(shape)
    key = (name, like.dtype, like.device, torch.is_inference_mode_enabled())
    flat = cache.get(key)
    if flat is None or flat.numel() < numel:
        flat = cache[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return flat[:numel].view(shape)


def _chunk_states(dt_t, dtu_t, A2, B_t, reset_t, start, stop, h_prev):
    """Decays and states of steps [start, stop) given the state before them.

    Returns ``decay`` (T + 1, b, n, d) with the rows past the chunk zero (so ``decay[1:]`` are the
    links between consecutive steps and nothing flows past the chunk's end), the walk buffer whose
    ``[0, :T]`` holds the states h_t, and the walk's block length.
    """
    steps = stop - start
    batch, d_state, d_inner = h_prev.shape
    block = _block_len(steps, batch * d_state * d_inner)
    padded = -(-steps // block) * block
    decay = _workspace("decay", (padded + 1, batch, d_state, d_inner), dt_t)
    torch.mul(dt_t[start:stop, :, None, :], A2, out=decay[:steps]).exp2_()
    decay[steps:].zero_()
    if reset_t is not None:
        t_idx, b_idx = reset_t[start:stop].nonzero(as_tuple=True)
        decay[t_idx, b_idx] = 0.0  # touches the reset slices only
    buf = _workspace("states", (1 if padded == block else 2, padded, batch, d_state, d_inner), dt_t)
    states = buf[0]
    torch.mul(B_t[start:stop, :, :, None], dtu_t[start:stop, :, None, :], out=states[:steps])
    states[steps:].zero_()
    states[0].addcmul_(decay[0], h_prev)
    _linear_scan_(buf, decay[1:], block, reverse=False)
    return decay, buf, block
