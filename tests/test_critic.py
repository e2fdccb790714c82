"""The critic's Q ensemble: the batched heads, with the input projections folded into the first layer, equal
every member run on its own on the concatenated embeddings."""

import pytest
import torch
import torch.nn.functional as F

from resel_train.action_space import Box, Discrete
from resel_train.nets.critic import Critic


def member_by_member(critic: Critic, obs: torch.Tensor, act: torch.Tensor | None, ctx: torch.Tensor) -> torch.Tensor:
    """Reference: x = cat(head_obs(o)[, head_act(a)], ctx); head k is elu(x W1_k + b1_k) -> elu(. W2_k + b2_k) ->
    . W3_k + b3_k, one member at a time."""
    parts = [critic.head_obs(obs)] + ([] if act is None else [critic.head_act(act)]) + [ctx]
    x = torch.cat(parts, -1)
    outs = []
    for k in range(critic.n_heads):
        h = x
        for i, layer in enumerate(critic.layers):
            h = h @ layer.weight[k] + layer.bias[k, 0]
            if i < len(critic.layers) - 1:
                h = F.elu(h)
        outs.append(h)
    return torch.stack(outs, dim=-2)  # (..., n_heads, out)


def _inputs(discrete: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    act = None if discrete else torch.randn(2, 7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(2, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    return obs, act, ctx


@pytest.mark.parametrize("discrete", [False, True])
def test_heads_match_each_member_alone_with_gradients(discrete):
    torch.manual_seed(0)
    critic = Critic(3, Discrete(2) if discrete else Box(2), encoder="mlp", n_heads=5, embed=8, hidden=16).double()
    with torch.no_grad():  # non-zero projection biases, so their fold into the first layer's bias is exercised
        for p in (critic.head_obs.bias, *([] if discrete else [critic.head_act.bias])):
            p.normal_()
    obs, act, ctx = _inputs(discrete)
    weights = torch.randn(2, 7, 5, 2 if discrete else 1, dtype=torch.float64)
    wrt = [t for t in (act, ctx) if t is not None] + [p for n, p in critic.named_parameters()
                                                      if not n.startswith(("encoder", "embedding"))]
    got = critic.ensemble(obs, act, ctx)
    grads = torch.autograd.grad((got * weights).sum(), wrt)
    want = member_by_member(critic, obs, act, ctx)
    want_grads = torch.autograd.grad((want * weights).sum(), wrt)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert len(grads) == (3 if discrete else 6) + 6  # inputs, projections, the three layers
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("discrete", [False, True])
def test_selected_heads_equal_those_columns_of_all_heads(discrete):
    """The target computes only its random pair of heads: the same values as picking them from all heads."""
    torch.manual_seed(1)
    critic = Critic(3, Discrete(2) if discrete else Box(2), encoder="mlp", n_heads=6, embed=8, hidden=16).double()
    obs, act, ctx = _inputs(discrete, seed=1)
    pair = torch.tensor([4, 1])
    torch.testing.assert_close(critic.ensemble(obs, act, ctx, pair),
                               critic.ensemble(obs, act, ctx).index_select(-2, pair), rtol=1e-12, atol=1e-12)
