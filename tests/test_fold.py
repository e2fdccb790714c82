"""Input projections folded into the next layer: the same function and gradients as projecting, concatenating
and applying the layer (float64 references written out by hand)."""

import pytest
import torch

from resel_train.nets.encoders import make_encoder
from resel_train.nets.inputs import HistoryEmbedding
from resel_train.nets.registry import ENCODER_NAMES
from resel_train.ops.fold import fold_projections


def test_fold_projections_by_hand():
    """cat([x_1, x_2, c]) @ W + b after the fold equals cat([P_1(x_1), P_2(x_2), c]) @ weight + bias (P_2 without
    a bias); blocks that do not cover the layer's rows are refused."""
    g = torch.Generator().manual_seed(2)
    p1, p2 = torch.nn.Linear(2, 3).double(), torch.nn.Linear(1, 2, bias=False).double()
    weight, bias = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    x1, x2, c = (torch.randn(6, n, generator=g, dtype=torch.float64) for n in (2, 1, 2))
    w, b = fold_projections(weight, bias, [p1, p2], 2)
    assert w.shape == (5, 4)
    want = torch.cat([p1(x1), p2(x2), c], -1) @ weight + bias
    torch.testing.assert_close(torch.cat([x1, x2, c], -1) @ w + b, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cover 5 of the layer's 7"):
        fold_projections(weight, bias, [p1, p2])


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero biases everywhere, so folding the projections' biases is exercised
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return module


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
@pytest.mark.parametrize("reward_as_input", [False, True])
def test_encoder_reads_raw_inputs_with_the_embedding_folded(encoder, reward_as_input):
    """encoder(raw, projections) == encoder(cat(P_i(x_i))), values and every gradient; the step form agrees."""
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
    embedded = torch.cat([p(x) for p, x in zip(emb.projections, inputs)], -1)  # written out: the reference
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
    # the one-step form reads the embeddings unfolded (HistoryEmbedding.forward): the same first step
    first = [x[:, 0] for x in inputs] + ([] if reward_as_input else [None])
    step, _ = enc.step(emb(*first), resets[:, 0], enc.initial_state(2, dtype=torch.float64))
    torch.testing.assert_close(step, want[:, 0], rtol=1e-7, atol=1e-7)  # the scans differ from a step in rounding
