"""ELU, the activation of every MLP in the networks, with the compiled CPU kernel where it applies.

On float32 CPU tensors :func:`elu` runs ``cpu_kernel``'s ELU (forward ~3x faster than torch's, and a
backward that reads the saved output instead of recomputing an exp); anywhere else (GPUs, float64,
while tracing for export or compilation, no C compiler) it is ``F.elu``, which computes the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resel_train.ops import cpu_kernel


def elu(x: Tensor) -> Tensor:
    """ELU with alpha 1 (``F.elu``'s default)."""
    return _KernelELU.apply(x) if cpu_kernel.applies_to(x) else F.elu(x)


def elu_members(x: Tensor, members: int) -> Tensor:
    """ELU of (rows, members * width), the members side by side per row, as (members, rows, width).

    The same values as ``elu(x).view(rows, members, width).transpose(0, 1)``; on the CPU kernel path the
    result is contiguous, so a batched matmul over the members reads it without a transposing copy.
    """
    if cpu_kernel.applies_to(x):
        return _KernelELUMembers.apply(x, members)
    return F.elu(x).view(x.shape[0], members, -1).transpose(0, 1)


class ELU(nn.Module):
    """``nn.ELU()`` through :func:`elu` (no parameters: state dicts are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        """ELU of ``x``."""
        return elu(x)


class _KernelELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = cpu_kernel.elu_forward(cpu_kernel.load(), x.contiguous())
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return cpu_kernel.elu_backward(cpu_kernel.load(), y, grad_y.contiguous())


class _KernelELUMembers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, members: int) -> Tensor:
        y = cpu_kernel.elu_members_forward(cpu_kernel.load(), x.contiguous(), members)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return cpu_kernel.elu_members_backward(cpu_kernel.load(), y, grad_y.contiguous()), None
