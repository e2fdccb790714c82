"""Input projections folded into the next layer: the same function and gradients as projecting, concatenating
and applying the layer (float64 references written out by hand)."""

import pytest
import torch

from resel_train.action_space import Box
from resel_train.nets.encoders import make_encoder
from resel_train.nets.inputs import HistoryEmbedding, fold_projections
from resel_train.nets.policy import Policy
from resel_train.nets.registry import ENCODER_NAMES


def test_fold_projections_by_hand():
    """cat([x_1, c]) @ W + b after the fold equals cat([P(x_1), c]) @ weight + bias; a short block list is refused."""
    g = torch.Generator().manual_seed(2)
    proj = torch.nn.Linear(2, 3).double()
    weight, bias = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    x, c = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    w, b = fold_projections(weight, bias, [proj, 2])
    assert w.shape == (4, 4)
    want = torch.cat([x @ proj.weight.t() + proj.bias, c], -1) @ weight + bias
    torch.testing.assert_close(torch.cat([x, c], -1) @ w + b, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cover 3 of the layer's 5"):
        fold_projections(weight, bias, [proj])


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero biases everywhere, so folding the projections' biases is exercised
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return module


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
@pytest.mark.parametrize("reward_as_input", [False, True])
def test_encoder_reads_raw_inputs_with_the_embedding_folded(encoder, reward_as_input):
    """encoder(raw, projections) == encoder(cat(P_i(x_i))), values and every gradient, sequence and step forms."""
    torch.manual_seed(0)
    emb = _perturbed(HistoryEmbedding(3, 2, reward_as_input, embed=8).double(), 1)
    enc = _perturbed(make_encoder(encoder, emb.out_dim, 8, 16).double(), 2)
    g = torch.Generator().manual_seed(3)
    obs, prev_obs = (torch.randn(2, 6, 3, generator=g, dtype=torch.float64) for _ in range(2))
    prev_act = torch.randn(2, 6, 2, generator=g, dtype=torch.float64)
    prev_rew = torch.randn(2, 6, 1, generator=g, dtype=torch.float64) if reward_as_input else None
    resets = torch.zeros(2, 6, dtype=torch.bool)
    resets[:, 0] = resets[0, 3] = True
    inputs = [obs, prev_obs, prev_act] + ([prev_rew] if reward_as_input else [])
    embedded = torch.cat([p(x) for p, x in zip(emb.projections, inputs)], -1)
    weights = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    params = list(emb.parameters()) + list(enc.parameters())
    got = enc(emb.raw(obs, prev_obs, prev_act, prev_rew), resets, projections=emb.projections)[0]
    want = enc(embedded, resets)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), params, allow_unused=True),
                    torch.autograd.grad((want * weights).sum(), params, allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    state = enc.initial_state(2, dtype=torch.float64)
    step, _ = enc.step(emb.raw(obs[:, 0], prev_obs[:, 0], prev_act[:, 0], None if prev_rew is None else prev_rew[:, 0]),
                       resets[:, 0], state, projections=emb.projections)
    torch.testing.assert_close(step, want[:, 0], rtol=1e-7, atol=1e-7)  # the scans differ from a step in rounding


def test_policy_head_folds_the_observation_projection():
    """The policy's head equals its MLP on cat([head_obs(o), context]), with gradients."""
    torch.manual_seed(0)
    policy = _perturbed(Policy(3, Box(2), encoder="mlp", embed=8, hidden=16).double(), 4)
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ctx = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    got = torch.cat(policy._head(obs, ctx), -1)
    want = torch.cat(policy.space.policy_head(policy.head(torch.cat([policy.head_obs(obs), ctx], -1))), -1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    wrt = [ctx, *policy.head_obs.parameters(), *policy.head.parameters()]
    weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), wrt), torch.autograd.grad((want * weights).sum(), wrt)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
