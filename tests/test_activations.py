"""ELU through the compiled CPU kernel against a float64 reference (values, gradients, edge values), and the
fallback to F.elu wherever the kernel does not apply."""

import pytest
import torch
import torch.nn.functional as F

from resel_train.ops import activations, cpu_kernel

needs_kernel = pytest.mark.skipif(cpu_kernel.load() is None, reason="no C compiler for the CPU kernels")


def reference_elu(x: torch.Tensor) -> torch.Tensor:
    """ELU in float64 by its definition: x for x > 0, exp(x) - 1 otherwise (expm1 keeps small |x| exact)."""
    x = x.double()
    return torch.where(x > 0, x, torch.expm1(x))


@needs_kernel
def test_kernel_is_used_on_float32_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernel, "elu_forward", lambda lib, x: calls.append(1) or F.elu(x))
    activations.elu(torch.randn(3))
    assert calls, "float32 CPU input must take the kernel path"


@needs_kernel
@pytest.mark.parametrize("shape", [(1,), (17,), (3, 5, 33), (8, 408, 64)])
def test_forward_and_gradient_match_float64(shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3).requires_grad_()
    y = activations.elu(x)
    ref = reference_elu(x.detach())
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-7)
    g = torch.randn(shape)
    (grad,) = torch.autograd.grad(y, x, g)
    ref_grad = g.double() * torch.where(x.detach().double() > 0, 1.0, torch.exp(x.detach().double()))
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


@needs_kernel
def test_edge_values():
    x = torch.tensor([0.0, 1e-8, -1e-8, -1e-3, -0.03124, -0.03126, -0.5, -20.0, -100.0, -1e30, 1e30,
                      float("inf"), -float("inf")])
    y = activations.elu(x)
    torch.testing.assert_close(y.double(), reference_elu(x), rtol=1e-6, atol=1e-12)
    assert torch.isnan(activations.elu(torch.tensor([float("nan"), 1.0, -1.0])))[0], "NaN must stay NaN"


@needs_kernel
def test_non_contiguous_input():
    x = torch.randn(6, 10).t()
    torch.testing.assert_close(activations.elu(x).double(), reference_elu(x), rtol=1e-5, atol=1e-7)


def test_fallback_outside_float32_cpu(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "elu_forward", lambda *a: pytest.fail("kernel used for float64"))
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    y = activations.elu(x)
    torch.testing.assert_close(y, reference_elu(x.detach()))
    assert y.grad_fn.name() == "EluBackward0"


def test_module_matches_function():
    x = torch.randn(4, 9)
    torch.testing.assert_close(activations.ELU()(x), activations.elu(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the kernel path, then the F.elu fallback
@pytest.mark.parametrize("rows,members,width", [(1, 1, 1), (5, 3, 7), (408, 8, 64)])
def test_elu_members_swaps_axes_and_matches_float64(dtype, rows, members, width):
    torch.manual_seed(1)
    x = (torch.randn(rows, members * width, dtype=dtype) * 3).requires_grad_()
    y = activations.elu_members(x, members)
    ref = reference_elu(x.detach()).view(rows, members, width).transpose(0, 1)
    assert y.shape == (members, rows, width) and y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-7)
    g = torch.randn(members, rows, width, dtype=dtype)
    (grad,) = torch.autograd.grad(y, x, g)
    ref_grad = (g.double().transpose(0, 1).reshape(rows, -1)
                * torch.where(x.detach().double() > 0, 1.0, torch.exp(x.detach().double())))
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
