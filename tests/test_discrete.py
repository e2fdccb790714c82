"""Discrete-action RESeL (Key-to-Door): categorical head, all-action critic, expectation target and
policy loss against plain-loop hand computations, and a 2-update smoke run with the paper's model."""

import math

import numpy as np
import pytest
import torch

from resel_experiments.metrics import read_metrics
from resel_train.action_space import Discrete, categorical_action, gumbel_noise
from resel_train.algo import RESeL, UpdateNoise
from resel_train.buffer import TrajectoryBuffer
from resel_train.config import resolve_config
from resel_train.nets.critic import Critic
from resel_train.nets.encoders import make_encoder
from resel_train.nets.policy import Policy
from resel_train.persist.checkpoint import load_checkpoint
from resel_train.trainer import Trainer

TINY = ["model.mamba.d_state=4", "model.embed=16", "model.hidden=16", "model.mamba.dt_rank=2", "algo.batch_size=64"]
N_ACT = 3


def tiny_discrete_agent(**algo):
    cfg = resolve_config("KeyToDoor-60", overrides=TINY + [f"algo.{k}={v}" for k, v in algo.items()])
    return RESeL(1, N_ACT, False, cfg.model, cfg.algo, seed=0, discrete=True)


def one_trajectory_batch(rew, terminated, actions):
    buf = TrajectoryBuffer(1, N_ACT, pad=0, seed=0)
    obs = np.arange(len(rew) + 1, dtype=np.float32)[:, None]
    buf.add_trajectory(obs, np.eye(N_ACT, dtype=np.float32)[actions], np.asarray(rew, np.float32), terminated)
    return buf.sample(len(rew))


def q_table(obs):
    """Fixed Q_k(o, a) = 10 k + 2 o + a^2 for 8 heads and 3 actions, (..., 8, 3)."""
    k = torch.arange(8.0)[:, None]
    a = torch.arange(float(N_ACT))[None, :]
    return 10.0 * k + 2.0 * obs[..., None, None] + a**2


def test_preset_holds_the_paper_model():
    cfg = resolve_config("KeyToDoor-120", "keydoor")
    assert (cfg.model.input_layers, cfg.model.mamba.d_conv, cfg.model.mamba.n_blocks, cfg.algo.fixed_alpha) == (3, 1, 1, 0.2)
    assert resolve_config("KeyToDoor-500", "keydoor").model.mamba.n_blocks == 4
    cpu = resolve_config("KeyToDoor-60", preset="cpu")
    assert (cpu.model.mamba.d_conv, cpu.model.input_layers, cpu.algo.fixed_alpha, cpu.warmup_steps) == (1, 3, 0.2, 1000)
    assert cpu.model.hidden < cfg.model.hidden


@pytest.mark.parametrize("terminated", [True, False])
def test_discrete_target_by_hand(monkeypatch, terminated):
    """y_t = r_t + gamma (1 - term) sum_a pi(a|t+1) (min_{k in pair} Q'_k(o_{t+1}, a) - alpha log pi(a|t+1))."""
    agent = tiny_discrete_agent(gamma=0.5)
    def target_q_all(obs, ctx, heads=None):
        table = q_table(obs[..., 0])
        return table if heads is None else table.index_select(-2, heads)

    monkeypatch.setattr(agent.critic_target, "q_all", target_q_all)
    rew = [1.0, 2.0, 3.0]
    batch = one_trajectory_batch(rew, terminated, [0, 2, 1])
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.0, -0.5], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.5]])
    logits = logits[: batch.reset.shape[1]][None]  # (1, L, 3); slot t+1 is the next step of slot t
    policy_out = (logits, torch.log_softmax(logits, -1))
    noise = UpdateNoise(head_pair=torch.tensor([5, 3]))
    y = agent.critic_target_value(batch, noise, policy_out)[0, :3, 0]
    expected = []
    for t, r in enumerate(rew):
        z = logits[0, t + 1].tolist()
        norm = math.log(sum(math.exp(v) for v in z))
        value = 0.0
        for a in range(N_ACT):
            logp = z[a] - norm
            low = min(10.0 * 5 + 2.0 * (t + 1) + a * a, 10.0 * 3 + 2.0 * (t + 1) + a * a)
            value += math.exp(logp) * (low - 0.2 * logp)
        bootstrap = 0.0 if (terminated and t == 2) else 1.0
        expected.append(r + 0.5 * bootstrap * value)
    torch.testing.assert_close(y, torch.tensor(expected))


def test_discrete_policy_loss_and_entropy_by_hand(monkeypatch):
    """loss = masked mean over steps of sum_a pi(a) (alpha log pi(a) - mean over 8 heads of Q_k(o, a))."""
    agent = tiny_discrete_agent()
    monkeypatch.setattr(agent.critic, "q_all", lambda obs, ctx: q_table(obs[..., 0]))
    batch = one_trajectory_batch([0.0] * 4, False, [0, 1, 2, 0])
    length = batch.reset.shape[1]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, length, N_ACT, generator=g, requires_grad=True)
    metrics = agent._policy_and_alpha_step(batch, (logits, torch.log_softmax(logits, -1)), None)
    losses, entropies = [], []
    for t in range(4):  # the 4 transition slots (mask 1)
        z = logits[0, t].tolist()
        norm = math.log(sum(math.exp(v) for v in z))
        loss = ent = 0.0
        for a in range(N_ACT):
            logp = z[a] - norm
            mean_q = sum(10.0 * k + 2.0 * t + a * a for k in range(8)) / 8
            loss += math.exp(logp) * (0.2 * logp - mean_q)
            ent -= math.exp(logp) * logp
        losses.append(loss)
        entropies.append(ent)
    assert batch.mask[0, :, 0].tolist()[:4] == [1.0] * 4 and batch.mask.sum() == 4
    assert metrics["policy_loss"].item() == pytest.approx(np.mean(losses), rel=1e-5)
    assert metrics["entropy"].item() == pytest.approx(np.mean(entropies), rel=1e-5)
    assert metrics["alpha"].item() == pytest.approx(0.2)
    assert logits.grad is not None and torch.all(logits.grad[0, 4:] == 0)  # padding slots get no gradient


def test_discrete_critic_picks_the_stored_action_and_noise_has_no_action_draws():
    critic = Critic(2, Discrete(N_ACT), encoder="mlp", embed=8, hidden=16)
    obs, ctx = torch.randn(5, 2), torch.randn(5, 8)
    q_all = critic.q_all(obs, ctx)
    assert q_all.shape == (5, 8, N_ACT)
    actions = torch.tensor([0, 2, 1, 1, 0])
    q = critic.q(obs, torch.eye(N_ACT)[actions], ctx)
    torch.testing.assert_close(q, q_all[torch.arange(5), :, actions])
    agent = tiny_discrete_agent(policy_delay=2)
    first, agent.critic_steps = agent.draw_noise(2, 9), 1
    second = agent.draw_noise(2, 9)
    assert first.target is None and first.policy is None and not first.policy_step
    assert second.policy is None and second.policy_step and len(set(second.head_pair.tolist())) == 2


def test_categorical_head_log_probs_entropy_and_sampling():
    torch.manual_seed(0)
    policy = Policy(4, Discrete(N_ACT), encoder="mlp", embed=8, hidden=16)
    obs = torch.randn(2, 6, 4)
    logits, log_probs, _ = policy(obs, torch.zeros_like(obs), torch.zeros(2, 6, N_ACT), None,
                                  torch.zeros(2, 6, dtype=torch.bool))
    assert logits.shape == log_probs.shape == (2, 6, N_ACT)
    z = logits.detach().double().numpy()
    by_hand = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(log_probs.detach().numpy(), by_hand, rtol=1e-5, atol=1e-6)
    # entropy of a known distribution through the same formula the update uses
    lp = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    assert float(-(lp.exp() * lp).sum()) == pytest.approx(1.5 * math.log(2))
    # Gumbel-max: zero noise is greedy; with noise, sample frequencies follow the probabilities
    row = torch.tensor([1.0, 0.0, -1.0])
    assert int(categorical_action(row, torch.zeros(3))) == 0
    draws = categorical_action(row.expand(40000, 3), gumbel_noise((40000, 3), torch.Generator().manual_seed(1)))
    freq = torch.bincount(draws, minlength=3).double() / 40000
    torch.testing.assert_close(freq, torch.softmax(row.double(), 0), atol=0.01, rtol=0)


def test_conv_free_mamba_and_three_layer_input_step_equals_forward():
    torch.manual_seed(0)
    enc = make_encoder("mamba", 6, out_dim=8, hidden=16, input_layers=3, d_state=4, d_conv=1, expand=2, dt_rank=2)
    assert len(enc.input_more) == 2
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 6, generator=g)
    resets = torch.rand(2, 30, generator=g) < 0.15
    resets[:, 0] = True
    y_seq, final = enc(x, resets)
    state, ys = enc.initial_state(2), []
    assert state[0].shape == (2, 32, 0)  # no conv window to carry
    for t in range(30):
        y, state = enc.step(x[:, t], resets[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), y_seq, rtol=1e-5, atol=1e-5)
    for a, b in zip(state, final, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_two_update_smoke_run_keytodoor(tmp_path):
    overrides = TINY + ["warmup_steps=85", f"eval_every={10**9}", f"checkpoint_every={10**9}", "eval_episodes=2",
                        "algo.batch_size=32", "algo.update_every=1", "replay_capacity=20000", "threads=1"]
    cfg = resolve_config("KeyToDoor-60", overrides=overrides, steps=87, out=str(tmp_path))
    trainer = Trainer(cfg)
    result = trainer.train(show_progress=False)
    assert trainer.learner.agent.critic_steps == 2
    assert np.isfinite(result["critic_loss"]) and np.isfinite(result["policy_loss"])
    stored = trainer.learner.buffer.sample(32).act
    assert set(stored.sum(-1).unique().tolist()) <= {0.0, 1.0}  # one-hot actions (zero in padding)
    data = load_checkpoint(trainer.run_dir / "checkpoint.pt")
    assert data["model"]["discrete"] is True and data["model"]["act_dim"] == 4
    assert data["model"]["encoder_kwargs"]["d_conv"] == 1 and data["model"]["encoder_kwargs"]["input_layers"] == 3
    last = read_metrics(trainer.run_dir)[-1]
    assert 0.0 <= last["eval_success_rate"] <= 1.0 and "eval_return" in last


def test_stochastic_predict_samples_the_categorical_policy_exactly(tmp_path):
    """predict(deterministic=False) on a discrete policy draws each action with its softmax probability."""
    from resel import RESeL as Model
    from resel_train.persist.checkpoint import save_checkpoint

    overrides = TINY + ["warmup_steps=85", f"eval_every={10**9}", "eval_episodes=1", "replay_capacity=20000",
                        "threads=1"]
    cfg = resolve_config("KeyToDoor-60", overrides=overrides, steps=85, out=str(tmp_path))
    Trainer(cfg).train(show_progress=False)
    path = tmp_path / "KeyToDoor-60_mamba_s0" / "checkpoint.pt"
    data = load_checkpoint(path)
    last = max((k for k in data["policy"] if k.startswith("head.") and k.endswith(".bias")),
               key=lambda k: int(k.split(".")[1]))
    data["policy"][last] = torch.arange(4.0)  # logits 0, 1, 2, 3 whatever the input
    data["policy"][last.replace(".bias", ".weight")].zero_()
    save_checkpoint(path, {k: v for k, v in data.items() if k not in ("format", "version", "checksum")})
    n = 8000
    actions, _ = Model.load(path).predict(np.zeros((n, data["model"]["obs_dim"]), np.float32), deterministic=False)
    expected = np.exp(np.arange(4.0)) / np.exp(np.arange(4.0)).sum()  # 0.032, 0.087, 0.237, 0.644
    np.testing.assert_allclose(np.bincount(np.asarray(actions).reshape(-1), minlength=4) / n, expected, atol=0.02)
