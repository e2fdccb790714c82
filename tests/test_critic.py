"""The critic's Q ensemble: the batched heads equal every member run on its own."""

import pytest
import torch
import torch.nn.functional as F

from resel_train.action_space import Box, Discrete
from resel_train.nets.critic import Critic


def member_by_member(critic: Critic, x: torch.Tensor) -> torch.Tensor:
    """Reference: head k is elu(x W1_k + b1_k) -> elu(. W2_k + b2_k) -> . W3_k + b3_k, one member at a time."""
    outs = []
    for k in range(critic.n_heads):
        h = x
        for i, layer in enumerate(critic.layers):
            h = h @ layer.weight[k] + layer.bias[k, 0]
            if i < len(critic.layers) - 1:
                h = F.elu(h)
        outs.append(h)
    return torch.stack(outs, dim=-2)  # (..., n_heads, out)


@pytest.mark.parametrize("discrete", [False, True])
def test_heads_match_each_member_alone_with_gradients(discrete):
    torch.manual_seed(0)
    critic = Critic(3, Discrete(2) if discrete else Box(2), encoder="mlp", n_heads=5, embed=8, hidden=16).double()
    x = torch.randn(2, 7, critic.layers[0].weight.shape[1], dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 7, 5, 2 if discrete else 1, dtype=torch.float64)
    got = critic.ensemble(x)
    grads = torch.autograd.grad((got * weights).sum(), [x, *critic.layers.parameters()])
    want = member_by_member(critic, x)
    want_grads = torch.autograd.grad((want * weights).sum(), [x, *critic.layers.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("discrete", [False, True])
def test_selected_heads_equal_those_columns_of_all_heads(discrete):
    """The target computes only its random pair of heads: the same values as picking them from all heads."""
    torch.manual_seed(1)
    critic = Critic(3, Discrete(2) if discrete else Box(2), encoder="mlp", n_heads=6, embed=8, hidden=16).double()
    x = torch.randn(4, 5, critic.layers[0].weight.shape[1], dtype=torch.float64)
    pair = torch.tensor([4, 1])
    torch.testing.assert_close(critic.ensemble(x, pair), critic.ensemble(x).index_select(-2, pair), rtol=1e-12, atol=1e-12)
