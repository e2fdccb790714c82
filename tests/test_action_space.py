"""The action spaces against plain float64 computations by hand: the Box's tanh-Gaussian log-prob, soft value and
policy terms, the Discrete space's expectations over the actions; decode and encode round trips within finite and
infinite bounds; the torch spaces agree with the deploy contract's mappings; the warm-up and exploration draws."""

import math

import numpy as np
import pytest
import torch

from resel_deploy.contract import ActionMapping, BoxMapping, DiscreteMapping, mapping_kind
from resel_train.action_space import LOG_STD_MAX, LOG_STD_MIN, Box, Discrete, gumbel_noise, space_from_meta
from resel_train.nets.critic import Critic

ALPHA = 0.3


class TableCritic:
    """Q_k(o, a) = (k + 1) * (o + sum_i c_i a_i) + k for 4 heads (Box), and Q_k(o, a) = 10 k + 2 o + a^2 for every
    action a (Discrete): values a hand computation can repeat."""

    n_heads, coef = 4, torch.tensor([1.0, -2.0], dtype=torch.float64)

    def q(self, obs, act, ctx, heads=None):
        k = torch.arange(self.n_heads, dtype=torch.float64)
        values = (k + 1) * (obs + (act * self.coef).sum(-1, keepdim=True)) + k
        return values if heads is None else values.index_select(-1, heads)

    def q_all(self, obs, ctx, heads=None):
        k = torch.arange(self.n_heads, dtype=torch.float64)[:, None]
        a = torch.arange(3, dtype=torch.float64)[None, :]
        table = 10.0 * k + 2.0 * obs[..., None] + a**2
        return table if heads is None else table.index_select(-2, heads)

    def box_q(self, k, o, a):
        return (k + 1) * (o + sum(c * x for c, x in zip(self.coef.tolist(), a))) + k


def squashed_by_hand(mean, log_std, noise):
    """(tanh(u), log N(u; mean, std) - sum log(1 - tanh(u)^2)) with u = mean + std * noise, in plain floats."""
    act, logp = [], 0.0
    for m, s, n in zip(mean, log_std, noise):
        u = m + math.exp(s) * n
        logp += -0.5 * n * n - s - 0.5 * math.log(2 * math.pi) - math.log(1.0 - math.tanh(u) ** 2)
        act.append(math.tanh(u))
    return act, logp


def box_batch(rows=5):
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(rows, 2, generator=g, dtype=torch.float64)
    log_std = torch.rand(rows, 2, generator=g, dtype=torch.float64) - 1.0
    noise = torch.randn(rows, 2, generator=g, dtype=torch.float64)
    obs = torch.randn(rows, 1, generator=g, dtype=torch.float64)
    return mean, log_std, noise, obs


def test_box_soft_value_and_policy_terms_by_hand():
    space, critic = Box(2), TableCritic()
    mean, log_std, noise, obs = box_batch()
    pair = torch.tensor([3, 1])
    alpha = torch.tensor(ALPHA, dtype=torch.float64)
    value = space.soft_value(critic, (mean, log_std), obs, None, noise, pair, alpha)
    objective, entropy = space.policy_terms(critic, (mean, log_std), obs, None, noise, alpha)
    assert value.shape == objective.shape == entropy.shape == (5, 1)
    for r in range(5):
        act, logp = squashed_by_hand(mean[r].tolist(), log_std[r].tolist(), noise[r].tolist())
        o = float(obs[r, 0])
        low = min(critic.box_q(k, o, act) for k in (3, 1))
        mean_q = sum(critic.box_q(k, o, act) for k in range(4)) / 4
        assert float(value[r, 0]) == pytest.approx(low - ALPHA * logp, rel=1e-12)
        assert float(objective[r, 0]) == pytest.approx(ALPHA * logp - mean_q, rel=1e-12)
        assert float(entropy[r, 0]) == pytest.approx(-logp, rel=1e-12)
    assert space.update_noise((2, 3, 2), torch.Generator()).shape == (2, 3, 2)


def test_box_policy_head_splits_log_std_then_mean_and_clamps():
    out = torch.tensor([[-30.0, 0.5, 1.0, -2.0], [5.0, -1.0, 0.25, 3.0]], dtype=torch.float64)
    mean, log_std = Box(2).policy_head(out)
    np.testing.assert_array_equal(mean.numpy(), [[1.0, -2.0], [0.25, 3.0]])
    np.testing.assert_array_equal(log_std.numpy(), [[LOG_STD_MIN, 0.5], [LOG_STD_MAX, -1.0]])
    assert Box(2).policy_out_dim == 4 and Discrete(3).policy_out_dim == 3


def test_discrete_soft_value_policy_terms_and_head_by_hand():
    space, critic = Discrete(3), TableCritic()
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.0, -0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    obs = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)
    dist = space.policy_head(logits)
    assert dist[0] is logits
    pair = torch.tensor([2, 0])
    alpha = torch.tensor(ALPHA, dtype=torch.float64)
    value = space.soft_value(critic, dist, obs, None, None, pair, alpha)
    objective, entropy = space.policy_terms(critic, dist, obs, None, None, alpha)
    for r, z in enumerate(logits.tolist()):
        norm = math.log(sum(math.exp(v) for v in z))
        o = float(obs[r, 0])
        want_value = want_objective = want_entropy = 0.0
        for a in range(3):
            logp = z[a] - norm
            assert float(dist[1][r, a]) == pytest.approx(logp, rel=1e-12)
            q = [10.0 * k + 2.0 * o + a * a for k in range(4)]
            want_value += math.exp(logp) * (min(q[2], q[0]) - ALPHA * logp)
            want_objective += math.exp(logp) * (ALPHA * logp - sum(q) / 4)
            want_entropy -= math.exp(logp) * logp
        assert float(value[r, 0]) == pytest.approx(want_value, rel=1e-12)
        assert float(objective[r, 0]) == pytest.approx(want_objective, rel=1e-12)
        assert float(entropy[r, 0]) == pytest.approx(want_entropy, rel=1e-12)
    assert space.update_noise((2, 3, 3), torch.Generator()) is None


@pytest.mark.parametrize("space", [Box(2), Discrete(2)])
def test_critic_q_of_a_stored_action_by_hand(space):
    """Box: the heads on (o, a, context); Discrete: the one-hot's column of every action's Q."""
    torch.manual_seed(0)
    critic = Critic(3, space, encoder="mlp", n_heads=3, embed=4, hidden=8).double()
    g = torch.Generator().manual_seed(1)
    obs, ctx = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    act = torch.eye(2, dtype=torch.float64)[torch.tensor([0, 1, 1, 0, 1, 0])]
    q = critic.q(obs, act, ctx)
    assert q.shape == (6, 3)
    parts = [critic.head_obs(obs), ctx] if critic.head_act is None else [critic.head_obs(obs), critic.head_act(act), ctx]
    x = torch.cat(parts, -1)
    for k in range(3):
        h = x
        for i, layer in enumerate(critic.layers):
            h = h @ layer.weight[k] + layer.bias[k, 0]
            h = torch.nn.functional.elu(h) if i < 2 else h
        want = h[:, 0] if critic.head_act is not None else (h * act).sum(-1)
        torch.testing.assert_close(q[:, k], want, rtol=1e-12, atol=1e-12)


# ---- decode / encode and the deploy mapping ------------------------------------------------------
BOUNDS = [([-2.0, 0.0, -math.inf], [2.0, 10.0, math.inf]), ([-1.0, 3.0, 0.5], [1.0, 3.0, 0.75]), (None, None)]


@pytest.mark.parametrize("low,high", BOUNDS)
def test_box_decode_by_hand_and_equal_to_the_contract_mapping(low, high):
    space = Box(3, low, high)
    mapping = BoxMapping.from_bounds(low, high, 3)
    assert space.mapping == mapping and space.bounded(low, high).mapping == mapping
    assert all(math.isfinite(v) for v in mapping.low + mapping.high)
    mean, log_std, noise, _ = box_batch(4)  # (4, 2): the third dimension repeats the first
    mean, log_std, noise = (torch.cat([t, t[:, :1]], 1).float() for t in (mean, log_std, noise))
    action, squashed = space.decode(mean, log_std, noise)
    for r in range(4):
        for i in range(3):
            s = math.tanh(float(mean[r, i]) + math.exp(float(log_std[r, i])) * float(noise[r, i]))
            lo, hi = mapping.low[i], mapping.high[i]
            assert float(squashed[r, i]) == pytest.approx(s, abs=1e-6)
            assert float(action[r, i]) == pytest.approx(s * (hi - lo) / 2 + (hi + lo) / 2, abs=1e-5)
    # the graph's action is exactly what the deploy side computes from the squashed action
    np.testing.assert_array_equal(action.numpy(), mapping.to_env(squashed.numpy()))


@pytest.mark.parametrize("low,high", BOUNDS)
def test_box_encode_and_to_env_round_trip(low, high):
    mapping = BoxMapping.from_bounds(low, high, 3)
    squashed = np.array([[-1.0, 0.0, 1.0], [0.25, -0.5, 0.75]], np.float32)
    env = mapping.to_env(squashed)
    assert env.dtype == np.float32 and np.all(env >= np.float32(mapping.low)) and np.all(env <= np.float32(mapping.high))
    back = mapping.encode(env)
    fixed = np.asarray(mapping.scale) == 0  # low == high: every action is that value, encoded as 0
    np.testing.assert_allclose(back[:, ~fixed], squashed[:, ~fixed], atol=1e-6)
    assert np.all(back[:, fixed] == 0.0)
    np.testing.assert_allclose(mapping.to_env(back), env, atol=1e-6)
    if low is not None and math.isinf(low[2]):  # an infinite dimension stays unscaled in [-1, 1]
        np.testing.assert_array_equal(env[:, 2], squashed[:, 2])


def test_discrete_decode_encode_and_the_contract_mapping_round_trip():
    space = Discrete(4)
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 0.0, 2.9]])
    noise = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.2]])
    action, one_hot = space.decode(logits, torch.log_softmax(logits, -1), noise)
    assert action.dtype == torch.int64 and action.tolist() == [1, 3]
    np.testing.assert_array_equal(one_hot.numpy(), np.eye(4, dtype=np.float32)[[1, 3]])
    mapping = space.mapping
    assert mapping == DiscreteMapping(4) and space.bounded([-5.0], [5.0]).mapping == mapping
    for i in range(4):
        assert mapping.to_env(mapping.encode(i)) == i
        np.testing.assert_array_equal(mapping.encode(mapping.to_env(one_hot[0].numpy())), one_hot[0].numpy())
    assert (mapping.low, mapping.high, mapping.act_dim) == ((0.0,), (3.0,), 4)


def test_spaces_from_metadata_and_env_spaces():
    import gymnasium

    box = space_from_meta({"act_dim": 2, "action_low": [-3.0, -math.inf], "action_high": [1.0, math.inf]})
    assert isinstance(box, Box) and box.mapping == BoxMapping((-3.0, -1.0), (1.0, 1.0)) and not box.discrete
    torch.testing.assert_close(box.act_scale, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(box.act_offset, torch.tensor([-1.0, 0.0]))
    disc = space_from_meta({"act_dim": 4, "discrete": True, "action_low": [0.0], "action_high": [3.0]})
    assert isinstance(disc, Discrete) and disc.discrete and disc.act_dim == 4
    assert ActionMapping.from_space(gymnasium.spaces.Discrete(5)) == DiscreteMapping(5)
    env_box = gymnasium.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, np.inf], np.float32), dtype=np.float32)
    assert ActionMapping.from_space(env_box) == BoxMapping((-2.0, -1.0), (2.0, 1.0))
    assert mapping_kind(True) is DiscreteMapping and mapping_kind(False) is BoxMapping
    assert ActionMapping.from_meta({"act_dim": 3}) == BoxMapping.for_dims(3) == Box(3).mapping
    assert Box(3).default_target_entropy == -3.0 and Discrete(4).default_target_entropy == -4.0


# ---- acting: the step outputs, noise and the warm-up --------------------------------------------
def test_mappings_describe_the_step_output_and_its_noise():
    box, disc = BoxMapping.for_dims(3), DiscreteMapping(4)
    assert box.output_names == ("action", "action_mean", "action_log_std") and box.head_names == ("mean", "log_std")
    assert disc.output_names == ("action", "action_logits", "action_log_probs")
    assert disc.head_names == ("logits", "log_probs")
    assert box.zeros(2).shape == (2, 3) and box.zeros(2).dtype == np.float32
    assert disc.zeros(2).shape == (2,) and disc.zeros(2).dtype == np.int64
    noise = np.empty((3, 4), np.float32)
    disc.sample_noise(np.random.default_rng(0), noise)
    u = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(noise, -np.log(-np.log(u)), rtol=1e-6)
    box_noise = np.empty((3, 3), np.float32)
    box.sample_noise(np.random.default_rng(0), box_noise)
    np.testing.assert_array_equal(box_noise, np.random.default_rng(0).standard_normal((3, 3), dtype=np.float32))
    assert disc.read_graph_bounds(lambda noise: pytest.fail("a Discrete graph is never probed")) is None
    out = np.zeros(3, np.float32)
    assert box.step_result(np.array([1.0, 2.0, 3.0], np.float32), out) is out and out.tolist() == [1.0, 2.0, 3.0]
    assert disc.step_result(np.array(2, np.int64), None) == 2 and disc.out_buffer() is None
    with pytest.raises(ValueError, match="returns an int"):
        disc.check_step_out(np.zeros(4, np.float32))


def test_box_reads_the_bounds_out_of_a_saturating_graph():
    """A probe that acts like a graph: tanh(mean + exp(log_std) * noise) rescaled, with a non-zero head."""
    mapping = BoxMapping((-2.0, 0.0), (2.0, 10.0))
    mean, log_std = np.array([[0.3, -4.0]], np.float32), np.array([[-3.0, 1.0]], np.float32)

    def probe(noise):
        squashed = np.tanh(mean + np.exp(log_std) * np.broadcast_to(noise, mean.shape))
        return mapping.to_env(squashed), mean, log_std

    low, high = mapping.read_graph_bounds(probe)
    np.testing.assert_array_equal(low, [-2.0, 0.0])
    np.testing.assert_array_equal(high, [2.0, 10.0])


def test_warm_up_and_exploration_draws_are_the_training_loops():
    """The spaces' draws equal the ones the training loop makes itself (the same generators, the same values)."""
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(5):
        np.testing.assert_array_equal(Discrete(4).random_action(rng_a), np.eye(4, dtype=np.float32)[rng_b.integers(4)])
        draw = Box(2).random_action(rng_a)
        assert draw.dtype == np.float32
        np.testing.assert_array_equal(draw, rng_b.uniform(-1.0, 1.0, 2).astype(np.float32))
    g_a, g_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(Box(2).exploration_noise(1, g_a), torch.randn((1, 2), generator=g_b), rtol=0, atol=0)
    torch.testing.assert_close(Discrete(3).exploration_noise(1, g_a), gumbel_noise((1, 3), g_b), rtol=0, atol=0)
