"""The critic ensemble's CPU node (``ops.ensemble_cpu``) equals the generic path (projections folded under
autograd, then the members' MLPs) computed in float64: values and every gradient, Box and Discrete heads,
all members or a pair, and with the critic's weights frozen (the policy step)."""

import copy

import pytest
import torch

from resel_train.action_space import Box, Discrete
from resel_train.nets.critic import Critic
from resel_train.ops import cpu_kernel, ensemble_cpu

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason="the CPU kernels did not build here")


def _critic(discrete: bool) -> Critic:
    torch.manual_seed(0)
    critic = Critic(3, Discrete(4) if discrete else Box(2), encoder="mlp", n_heads=5, embed=8, hidden=16)
    with torch.no_grad():  # non-zero biases everywhere, so every bias path is exercised
        for p in critic.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return critic


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("heads", [None, [4, 1]])
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("context_grad", [True, False])
def test_cpu_node_equals_the_generic_heads(discrete, heads, frozen, context_grad):
    """``context_grad`` False: only the action needs a gradient, as in the policy step (the node then takes the
    action's own rows of the folded weight)."""
    if discrete and frozen and not context_grad:
        pytest.skip("nothing would need a gradient: a Discrete head has no action input")
    critic = _critic(discrete)
    reference = copy.deepcopy(critic).double()  # float64: the generic path, folded under autograd
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(2, 9, 3, generator=g)
    act = None if discrete else torch.randn(2, 9, 2, generator=g)
    ctx = torch.randn(2, 9, 8, generator=g)
    index = None if heads is None else torch.tensor(heads)
    results = []
    for net, dtype in ((critic, torch.float32), (reference, torch.float64)):
        net.requires_grad_(not frozen)
        o = obs.to(dtype)
        a = None if act is None else act.to(dtype).requires_grad_()
        c = ctx.to(dtype).requires_grad_(context_grad)
        x = torch.cat([o] + ([] if a is None else [a]) + [c], -1).reshape(-1, o.shape[-1] + c.shape[-1]
                                                                          + (0 if a is None else a.shape[-1]))
        assert ensemble_cpu.applies(x, [net.head_obs], 3) == (dtype == torch.float32)
        out = net.ensemble(o, a, c, index)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
        wrt = [t for t in (a, c) if t is not None] + ([] if frozen else list(net.parameters()))
        wrt = [t for t in wrt if t.requires_grad]
        grads = torch.autograd.grad((out * weights).sum(), wrt, allow_unused=True)
        results.append([out.double()] + [None if t is None else t.double() for t in grads])
    n_inputs = (0 if discrete else 1) + (1 if context_grad else 0)
    assert len(results[0]) == 1 + n_inputs + (0 if frozen else len(list(critic.parameters())))
    for got, want in zip(*results):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
