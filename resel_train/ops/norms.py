"""RMSNorm (the Mamba block's pre-norm) with the compiled CPU kernel where it applies.

torch's CPU RMSNorm is ~7 ops forward and ~12 backward per call (square, mean, add, rsqrt and the
products, each with its backward); the kernel is one pass each way. Anywhere else (GPUs, float64,
while tracing for export, no C compiler) it is ``nn.RMSNorm`` itself, which computes the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resel_train.ops import cpu_kernel


def rms_norm(x: Tensor, norm: nn.RMSNorm, eps: Tensor) -> Tensor:
    """``norm(x)``; ``eps``: ``norm.eps`` as a (1,) float32 tensor on x's device (the kernel reads it from memory)."""
    if cpu_kernel.applies_to(x) and norm.weight is not None and norm.weight.dtype == torch.float32:
        return _KernelRMSNorm.apply(x, norm.weight, eps)
    return norm(x)


class _KernelRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: Tensor) -> Tensor:
        x = x.contiguous()
        y, rstd = cpu_kernel.rms_norm_forward(cpu_kernel.load(), x, weight.contiguous(), eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        dx, dweight = cpu_kernel.rms_norm_backward(cpu_kernel.load(), x, weight.contiguous(), rstd,
                                                   grad_y.contiguous())
        return dx, dweight, None
