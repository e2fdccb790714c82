"""The Mamba mixer's sequence form as one autograd node over the CPU kernels.

``in_proj`` -> causal conv -> SiLU -> ``x_proj`` -> ``dt_proj`` -> selective scan (delta bias and softplus,
D skip, z gate) -> ``out_proj``, as mamba-ssm's ``mamba_inner_fn`` groups them. The same function as the mixer's
generic path (the four projections, ``causal_conv1d``, ``F.silu`` and ``selective_scan`` under
autograd, ``resel_train.nets.mamba.Mamba``), with the backward written out: on a CPU, where every
dispatched op costs microseconds whatever its size, the chain's views, transposes and per-op
autograd nodes are a sizeable share of its cost at the sizes a laptop trains. The products read
transposed operands in place (batched matmuls), so no layout copies are made between the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from resel_train.ops import cpu_kernel


def mixer_scan(
    x: Tensor, in_proj_weight: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, x_proj_weight: Tensor,
    dt_proj_weight: Tensor, dt_proj_bias: Tensor, A_log: Tensor, D: Tensor, out_proj_weight: Tensor,
    reset: Tensor | None, conv_state: Tensor | None, ssm_state: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """x (b, L, d_model) -> (the mixer's output (b, L, d_model), the conv window to carry (b, d_inner,
    d_conv - 1), the last scan state (b, d_inner, d_state)); the states before step 0 are zero when None.
    Float32 CPU tensors only (``cpu_kernel.applies_to``); the projections have no bias (mamba-ssm's layout)."""
    reset = None if reset is None else cpu_kernel.as_bool(reset).contiguous()
    return _KernelMixer.apply(x, in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                              A_log, D, out_proj_weight, reset, conv_state, ssm_state)


def _bc_rows(x_dbl: Tensor, dt_rank: int, d_state: int) -> tuple[Tensor, Tensor]:
    """B and C as the scan kernel reads them: (b, L, d_state) slices of the projection, in place."""
    return (cpu_kernel.step_rows(x_dbl[..., dt_rank:dt_rank + d_state]),
            cpu_kernel.step_rows(x_dbl[..., dt_rank + d_state:]))


class _KernelMixer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                out_proj_weight, reset, conv_state, ssm_state):
        lib = cpu_kernel.load()
        batch, length, d_model = x.shape
        d_inner = conv_weight.shape[0]
        x = x.contiguous()
        xz = torch.mm(x.view(-1, d_model), in_proj_weight.t()).view(batch, length, 2 * d_inner)
        dt_rank, d_state = dt_proj_weight.shape[1], A_log.shape[1]
        xs = xz[..., :d_inner].transpose(1, 2).contiguous()  # (b, d_inner, L), as the conv kernel reads it
        z = xz[..., d_inner:].transpose(1, 2).contiguous()
        conv_weight = conv_weight.contiguous()
        history = None if conv_state is None or conv_state.shape[-1] == 0 else conv_state.contiguous()
        xc, conv_final = cpu_kernel.conv_forward(lib, xs, conv_weight, conv_bias, reset, history)
        u = F.silu(xc)
        # x_dbl = u^T W_x^T: (b, L, dt_rank + 2 d_state), B and C read from it in place
        x_dbl = torch.bmm(u.transpose(1, 2), x_proj_weight.t().expand(batch, -1, -1))
        B_l, C_l = _bc_rows(x_dbl, dt_rank, d_state)
        raw = torch.bmm(dt_proj_weight.expand(batch, -1, -1), x_dbl[..., :dt_rank].transpose(1, 2))  # (b, d_inner, L)
        A = -torch.exp(A_log)
        h0 = None if ssm_state is None else ssm_state.contiguous()
        gated, last, dt, y_pre = cpu_kernel.gated_scan_forward(lib, u, raw, A, B_l, C_l, D, z, dt_proj_bias, True,
                                                               reset, h0, keep=any(ctx.needs_input_grad))
        out = torch.bmm(gated.transpose(1, 2), out_proj_weight.t().expand(batch, -1, -1))  # (b, L, d_model)
        ctx.save_for_backward(x, xs, z, xc, u, x_dbl, raw, dt, A, gated, y_pre, reset, history, h0, in_proj_weight,
                              conv_weight, x_proj_weight, dt_proj_weight, dt_proj_bias, D, out_proj_weight)
        ctx.has_conv_bias, ctx.conv_state_shape = conv_bias is not None, None if conv_state is None else conv_state.shape
        return out, conv_final, last

    @staticmethod
    def backward(ctx, g_out, g_conv_final, g_last):
        (x, xs, z, xc, u, x_dbl, raw, dt, A, gated, y_pre, reset, history, h0, in_proj_weight, conv_weight,
         x_proj_weight, dt_proj_weight, dt_proj_bias, D, out_proj_weight) = ctx.saved_tensors
        lib = cpu_kernel.load()
        batch, length, d_model = x.shape
        dt_rank, d_state = dt_proj_weight.shape[1], A.shape[1]
        B_l, C_l = _bc_rows(x_dbl, dt_rank, d_state)
        g_out = g_out.contiguous()
        g_out_proj = torch.bmm(g_out.transpose(1, 2), gated.transpose(1, 2)).sum(0)  # out = gated^T W_out^T
        g_gated = torch.bmm(out_proj_weight.t().expand(batch, -1, -1), g_out.transpose(1, 2))  # (b, d_inner, L)
        du, g_raw, dA, dB, dC, g_D, g_z, g_dt_bias, dh0 = cpu_kernel.gated_scan_backward(
            lib, u, raw, dt, A, B_l, C_l, D, z, dt_proj_bias, True, y_pre, reset, h0, g_gated,
            None if g_last is None else g_last.contiguous())
        dt_low = x_dbl[..., :dt_rank]
        # raw = W_dt dt_low^T, x_dbl = u^T W_x^T
        g_dt_low = torch.bmm(g_raw.transpose(1, 2), dt_proj_weight.expand(batch, -1, -1))  # (b, L, dt_rank)
        g_dt_proj = torch.bmm(g_raw, dt_low).sum(0)
        g_x_dbl = torch.cat([g_dt_low, dB, dC], dim=-1)  # (b, L, dt_rank + 2 d_state)
        g_x_proj = torch.bmm(g_x_dbl.transpose(1, 2), u.transpose(1, 2)).sum(0)
        du.baddbmm_(x_proj_weight.t().expand(batch, -1, -1), g_x_dbl.transpose(1, 2))
        g_xc = torch.ops.aten.silu_backward(du, xc)
        dfinal = None if g_conv_final is None or g_conv_final.shape[-1] == 0 else g_conv_final.contiguous()
        g_xs, g_conv_weight, g_conv_bias, g_history = cpu_kernel.conv_backward(
            lib, xs, conv_weight, ctx.has_conv_bias, reset, history, g_xc, dfinal)
        g_xz = torch.cat([g_xs.transpose(1, 2), g_z.transpose(1, 2)], dim=2).view(batch * length, -1)
        g_x = torch.mm(g_xz, in_proj_weight).view(batch, length, d_model)
        g_in_proj = torch.mm(g_xz.t(), x.view(batch * length, d_model))
        g_conv_state = None
        if ctx.conv_state_shape is not None:  # a (b, d, 0) window (d_conv 1): nothing flows back
            g_conv_state = g_history if g_history is not None else xs.new_zeros(ctx.conv_state_shape)
        return (g_x, g_in_proj, g_conv_weight, g_conv_bias, g_x_proj, g_dt_proj, g_dt_bias, dA * A, g_D, g_out_proj,
                None, g_conv_state, dh0)
