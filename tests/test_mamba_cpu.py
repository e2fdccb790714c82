"""The Mamba mixer's CPU node (``ops.mamba_cpu``) equals the mixer's generic path, composed op by op under
autograd with the plain-loop scan: outputs, final states and every gradient, float32, with resets
(at 0, consecutive, at the last step), initial states or none, several lengths and d_conv 1."""

import copy

import pytest
import torch

from resel_train.nets.mamba import Mamba
from resel_train.ops import cpu_kernel

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason="the CPU kernels did not build here")


def _case(length: int, with_state: bool, d_conv: int, seed: int = 0):
    torch.manual_seed(seed)
    fused = Mamba(16, d_state=8, d_conv=d_conv, expand=2, dt_rank=4)
    with torch.no_grad():  # away from the init's symmetric values (D = 1, zero conv bias)
        for p in fused.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    loop = copy.deepcopy(fused)
    loop.scan_impl = "loop"  # the generic path: conv, SiLU, projections and the plain-loop scan under autograd
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, length, 16, generator=g)
    reset = torch.zeros(3, length, dtype=torch.bool)
    reset[0, 0] = reset[1, 0] = True  # row 2 carries its state in, resetting only at the last step
    reset[1, 2:4] = True  # consecutive resets (where the row is long enough)
    reset[2, length - 1] = True
    state = None
    if with_state:
        state = (torch.randn(3, 32, d_conv - 1, generator=g), torch.randn(3, 32, 8, generator=g))
    return fused, loop, x, reset, state, g


@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("d_conv", [4, 1])
def test_cpu_node_equals_the_generic_mixer(length, with_state, d_conv):
    fused, loop, x, reset, state, g = _case(length, with_state, d_conv)
    grad_y = torch.randn(3, length, 16, generator=g)
    grad_final = [torch.randn(3, 32, d_conv - 1, generator=g), torch.randn(3, 32, 8, generator=g)]
    results = []
    for mixer in (fused, loop):
        xl = x.clone().requires_grad_()
        sl = None if state is None else tuple(s.clone().requires_grad_() for s in state)
        y, final = mixer(xl, reset, sl)
        loss = (y * grad_y).sum() + sum((f * w).sum() for f, w in zip(final, grad_final))
        loss.backward()
        grads = [xl.grad] + ([] if sl is None else [s.grad for s in sl]) + [p.grad for p in mixer.parameters()]
        results.append([y, *final, *grads])
    names = ["y", "final conv", "final ssm", "grad x"] + (["grad conv state", "grad ssm state"] if with_state else []) \
        + [f"grad {n}" for n, _ in fused.named_parameters()]
    assert len(names) == len(results[0])
    for name, got, want in zip(names, *results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_cpu_node_without_grad_equals_the_generic_mixer():
    fused, loop, x, reset, state, _ = _case(19, True, 4)
    with torch.no_grad():
        got, want = fused(x, reset, state), loop(x, reset, state)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
