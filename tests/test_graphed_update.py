"""The static-shape update: bucketing, padding invariance, device parity and CUDA-graph replay vs eager."""

import copy

import numpy as np
import pytest
import torch

from resel_train.algo import RESeL
from resel_train.buffer import TrajectoryBuffer
from resel_train.config import resolve_config
from resel_train.graphed_update import GraphedUpdate, bucket
from resel_train.learner import metrics_to_floats

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
TINY = ["model.mamba.d_state=4", "model.mamba.d_conv=4", "model.embed=16", "model.hidden=16", "model.mamba.dt_rank=2",
        "algo.policy_lr=1e-3", "algo.critic_lr=1e-3", "algo.encoder_lr=1e-3"]


def test_bucket_rounds_up_by_at_most_an_eighth_to_few_sizes():
    sizes = [bucket(n) for n in range(1, 4097)]
    for n, b in zip(range(1, 4097), sizes):
        assert n <= b <= max(16, n * 9 // 8 + 1), (n, b)
        assert bucket(b) == b
    assert (bucket(1008), bucket(130), bucket(16), bucket(17)) == (1024, 144, 16, 18)
    assert len(set(sizes)) <= 16 + 8 * 8  # 16 exact sizes, then 8 per octave
    with pytest.raises(ValueError):
        bucket(0)


def make_agent(encoder: str, device="cpu", discrete: bool = False) -> RESeL:
    """A tiny agent for a 1-d Box, or (``discrete``) for 3 actions with the conv-free Key-to-Door Mamba."""
    env, extra = ("KeyToDoor-60", ["model.mamba.d_conv=1"]) if discrete else ("Pendulum-V", [])
    cfg = resolve_config(env, overrides=TINY + extra + [f"model.encoder={encoder}"])
    torch.manual_seed(0)
    return RESeL(2, 3 if discrete else 1, False, cfg.model, cfg.algo, seed=0, device=device, discrete=discrete)


def filled_buffer(seed=0, discrete: bool = False) -> TrajectoryBuffer:
    rng = np.random.default_rng(seed)
    buf = TrajectoryBuffer(2, 3 if discrete else 1, capacity=5000, pad=3, seed=seed)
    for length in (17, 40, 9, 33, 25, 50, 12):
        act = np.eye(3)[rng.integers(3, size=length)] if discrete else rng.uniform(-1, 1, (length, 1))
        buf.add_trajectory(rng.normal(size=(length + 1, 2)), act, rng.normal(size=length), bool(rng.random() < 0.5))
    return buf


def run_updates(agent: RESeL, steps: int, pad: tuple[int, int] | None, device="cpu", seed=0) -> list[dict]:
    buf, out = filled_buffer(seed, agent.space.discrete), []
    for _ in range(steps):
        batch = buf.sample(60)
        noise = agent.draw_noise(*batch.reset.shape)
        if pad is not None:
            rows, length = batch.reset.shape
            batch, noise = batch.padded(rows + pad[0], length + pad[1]), noise.padded(rows + pad[0], length + pad[1])
        out.append(metrics_to_floats(agent.update(batch.to(device), noise.to(device))))
    return out


def assert_same_parameters(a: RESeL, b: RESeL, atol: float) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x.cpu(), y.cpu(), rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("encoder,discrete", [("mamba", False), ("mlp", False), ("gru", False), ("mamba", True)])
def test_padding_the_batch_and_noise_changes_no_update(encoder, discrete):
    """Extra zero rows and slots (what static shapes add) give the same parameters after 4 updates."""
    plain, padded = make_agent(encoder, discrete=discrete), make_agent(encoder, discrete=discrete)
    m_plain = run_updates(plain, 4, pad=None)
    m_padded = run_updates(padded, 4, pad=(2, 21))
    assert plain.critic_steps == padded.critic_steps == 4
    assert_same_parameters(plain, padded, atol=2e-6)
    for a, b in zip(m_plain, m_padded):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-5, atol=1e-6)
    assert "policy_loss" in m_plain[1] and "policy_loss" not in m_plain[0]  # policy every 2nd critic step


def test_padding_cannot_shrink_a_batch():
    batch = filled_buffer().sample(60)
    with pytest.raises(ValueError, match="cannot pad"):
        batch.padded(1, batch.reset.shape[1])


@needs_cuda
@pytest.mark.parametrize("encoder", ["mamba", "mlp", "gru"])
def test_cuda_update_matches_cpu(encoder):
    """Same host noise, same batches: the CUDA update gives the CPU's parameters to float32 rounding."""
    cpu, gpu = make_agent(encoder), make_agent(encoder, device="cuda")
    run_updates(cpu, 4, pad=None)
    run_updates(gpu, 4, pad=None, device="cuda")
    assert_same_parameters(cpu, gpu, atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("encoder,discrete", [("mamba", False), ("mlp", False), ("mamba", True)])
def test_graph_replay_matches_the_eager_update(encoder, discrete):
    """Warm-up, capture and replay over changing shapes give the eager run's parameters and metrics."""
    eager, graphed = make_agent(encoder, "cuda", discrete), make_agent(encoder, "cuda", discrete)
    replay = GraphedUpdate(graphed)
    buf_a, buf_b = filled_buffer(discrete=discrete), filled_buffer(discrete=discrete)
    for _ in range(12):
        batch_a, batch_b = buf_a.sample(60), buf_b.sample(60)
        rows, length = (bucket(n) for n in batch_a.reset.shape)
        noise_a, noise_b = eager.draw_noise(*batch_a.reset.shape), graphed.draw_noise(*batch_b.reset.shape)
        m_eager = eager.update(batch_a.padded(rows, length).to("cuda"), noise_a.padded(rows, length).to("cuda"))
        m_graph = replay(batch_b, noise_b)
        a, b = metrics_to_floats(m_eager), metrics_to_floats(m_graph)
        np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-4, atol=1e-5)
    assert replay.captures >= 2 and graphed.critic_steps == eager.critic_steps == 12
    assert_same_parameters(eager, graphed, atol=1e-5)


@needs_cuda
def test_graphed_update_refuses_a_cpu_agent():
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedUpdate(make_agent("mlp"))


def test_optimiser_flags_follow_the_device_after_loading_a_state():
    agent = make_agent("mlp")
    state = copy.deepcopy(agent.training_state())
    for group in state["critic_opt"]["param_groups"]:
        group["capturable"] = True  # as saved by a CUDA run
    agent.load_training_state(state)
    assert all(not g["capturable"] for g in agent.critic_opt.param_groups)
