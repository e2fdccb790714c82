"""RMSNorm through the compiled CPU kernel against a float64 reference (values and gradients), and the
fallback to nn.RMSNorm wherever the kernel does not apply."""

import pytest
import torch

from resel_train.ops import cpu_kernel
from resel_train.ops.norms import rms_norm

needs_kernel = pytest.mark.skipif(cpu_kernel.load() is None, reason="no C compiler for the CPU kernels")


def reference(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x, w = x.double(), w.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 204, 64), (7, 33)])
@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_forward_and_gradients_match_float64(shape, eps):
    torch.manual_seed(0)
    norm = torch.nn.RMSNorm(shape[-1], eps=eps)
    with torch.no_grad():
        norm.weight.uniform_(-2, 2)
    x = (torch.randn(shape) * 3).requires_grad_()
    y = rms_norm(x, norm, torch.full((1,), eps))
    assert y.grad_fn.name().endswith("_KernelRMSNormBackward")
    ref_x, ref_w = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    ref = reference(ref_x, ref_w, eps)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
    g = torch.randn(shape)
    gx, gw = torch.autograd.grad(y, (x, norm.weight), g)
    ref_gx, ref_gw = torch.autograd.grad(ref, (ref_x, ref_w), g.double())
    torch.testing.assert_close(gx.double(), ref_gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw.double(), ref_gw, rtol=1e-5, atol=1e-5 * max(1.0, ref_gw.abs().max().item()))


def test_fallback_outside_float32_cpu_is_the_module():
    norm = torch.nn.RMSNorm(6, eps=1e-8).double()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = rms_norm(x, norm, torch.full((1,), 1e-8, dtype=torch.float64))
    torch.testing.assert_close(y, norm(x), rtol=0, atol=0)
    assert not y.grad_fn.name().endswith("_KernelRMSNormBackward")
