"""Causal depthwise conv1d that never mixes data across a trajectory reset.

A tap that reaches back past the latest reset (or into the initial window after a reset) is
masked out, so two trajectories stacked in one row see exactly what each sees alone. The step
form keeps the last ``kernel - 1`` inputs as explicit state and zeroes them at ``is_first``.
float32 CPU tensors go through a compiled loop (``cpu_kernel``) when a C compiler is available;
otherwise, and on GPUs, one shifted multiply-add per tap in tensor ops computes the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor

from resel_train.ops import cpu_kernel


def _segment_start(reset: Tensor | None, batch: int, length: int, kernel: int, device) -> Tensor:
    """Index of the latest reset at or before each step, or -kernel when there was none (b, L)."""
    none = torch.full((batch, length), -kernel, dtype=torch.long, device=device)
    if reset is None:
        return none
    idx = torch.arange(length, device=device).expand(batch, length)
    return torch.where(reset.bool(), idx, none).cummax(dim=1).values


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    reset: Tensor | None = None,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sequence form. x (b, d, L), weight (d, k), initial_state (b, d, k-1) of earlier inputs.

    Returns y (b, d, L) and the window to carry into the next call (b, d, k-1).
    """
    if not x.is_cuda and x.dtype == torch.float32 and cpu_kernel.load() is not None:
        return _KernelConv.apply(x, weight, bias, reset, initial_state)
    return _causal_conv1d_taps(x, weight, bias, reset, initial_state)


class _KernelConv(torch.autograd.Function):
    """The compiled CPU loop: one pass per (batch, channel) row, forward and backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, reset, initial_state):
        x, weight = x.contiguous(), weight.contiguous()
        reset = None if reset is None else cpu_kernel.as_bool(reset).contiguous()
        history = None if initial_state is None or initial_state.shape[-1] == 0 else initial_state.contiguous()
        y, final = cpu_kernel.conv_forward(cpu_kernel.load(), x, weight, None if bias is None else bias.contiguous(),
                                           reset, history)
        ctx.has_bias, ctx.has_initial_state = bias is not None, initial_state is not None
        ctx.save_for_backward(x, weight, reset, history)
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        x, weight, reset, history = ctx.saved_tensors
        dfinal = None if grad_final is None or grad_final.shape[-1] == 0 else grad_final.contiguous()
        dx, dweight, dbias, dhistory = cpu_kernel.conv_backward(cpu_kernel.load(), x, weight, ctx.has_bias, reset,
                                                                history, grad_y.contiguous(), dfinal)
        if ctx.has_initial_state and dhistory is None:  # a (b, d, 0) window: nothing flows back
            dhistory = x.new_zeros(x.shape[0], x.shape[1], 0)
        return dx, dweight, dbias, None, dhistory if ctx.has_initial_state else None


def _causal_conv1d_taps(
    x: Tensor, weight: Tensor, bias: Tensor | None, reset: Tensor | None, initial_state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The tensor-op form of :func:`causal_conv1d` (GPUs, float64, no C compiler)."""
    batch, dim, length = x.shape
    kernel = weight.shape[-1]
    history = x.new_zeros(batch, dim, kernel - 1) if initial_state is None else initial_state
    padded = torch.cat([history, x], dim=-1)  # position p of padded is time p - (k - 1)
    start = _segment_start(reset, batch, length, kernel, x.device)
    tap_time = torch.arange(length, device=x.device)[:, None] - (kernel - 1) + torch.arange(kernel, device=x.device)
    valid = (tap_time[None] >= start[:, :, None]).to(x.dtype).transpose(1, 2)  # (b, k, L)
    # tap j reads time t - (k - 1) + j: one shifted multiply-add per tap over the whole (b, d, L)
    # (a k-wide window tensor and an einsum over it cost ~10x more on a CPU)
    y = x.new_zeros(batch, dim, length) if bias is None else bias[None, :, None].expand(batch, dim, length)
    for j in range(kernel):
        y = y + padded[:, :, j : j + length] * valid[:, None, j, :] * weight[None, :, j, None]
    last_times = torch.arange(length - (kernel - 1), length, device=x.device)
    last_valid = (last_times[None] >= start[:, -1:]).to(x.dtype)  # (b, k-1)
    final = padded[:, :, padded.shape[-1] - (kernel - 1):] * last_valid[:, None, :]  # k = 1: empty window
    return y, final


def causal_conv1d_step(
    x_t: Tensor, window: Tensor, weight: Tensor, bias: Tensor | None, reset_t: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One step. x_t (b, d), window (b, d, k-1) -> y_t (b, d) and a new window (no in-place writes)."""
    if reset_t is not None:
        window = window * (1.0 - reset_t.to(window.dtype))[:, None, None]
    full = torch.cat([window, x_t[:, :, None]], dim=-1)
    y = (full * weight[None]).sum(-1)
    if bias is not None:
        y = y + bias
    return y, full[:, :, 1:]
