"""Rollouts against a real simulator: the ONNX controller acts exactly like the torch policy."""

import numpy as np
import pytest
import torch
from rich.console import Console

from resel.export.onnx import export_onnx
from resel_deploy.rollout import RolloutReport, latency_stats, run_rollouts
from resel_train.persist.checkpoint import load_checkpoint, policy_from_checkpoint
from resel_train.testing import make_random_checkpoint

pytest.importorskip("mujoco")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def walker(tmp_path_factory):
    """Paper-size Mamba policy for Walker2d (obs 17, act 6, bounds +-1), exported to ONNX."""
    ckpt = make_random_checkpoint(tmp_path_factory.mktemp("walker") / "walker.pt", seed=11, perturb=0.05)
    return ckpt, export_onnx(ckpt, check_steps=8).path


def torch_policy_actions(ckpt, report: RolloutReport, steps: int) -> np.ndarray:
    """The training Policy.step, fed what the controller saw (obs, previous reward, episode starts)."""
    data = load_checkpoint(ckpt)
    policy = policy_from_checkpoint(data).eval()
    low, high = (torch.tensor(data["model"][k]) for k in ("action_low", "action_high"))
    state = policy.encoder.initial_state(1)
    prev_obs, prev_act = torch.zeros(1, 17), torch.zeros(1, 6)
    actions = []
    with torch.inference_mode():
        for t in range(steps):
            obs = torch.from_numpy(report.observations[t])[None]
            first = report.first[t]
            if first:
                prev_obs, prev_act = torch.zeros(1, 17), torch.zeros(1, 6)
            mean, _, state = policy.step(obs, prev_obs, prev_act, None, torch.tensor([float(first)]), state)
            squashed = torch.tanh(mean)
            actions.append((low + (squashed + 1) * (high - low) / 2)[0].numpy())
            prev_obs, prev_act = obs, squashed
    return np.array(actions)


def test_onnx_rollout_matches_torch_policy(walker):
    ckpt, onnx_path = walker
    report = run_rollouts(onnx_path, "Walker2d", episodes=20, seed=3, record=True, max_steps=120)
    steps = min(200, report.steps)
    assert steps == 200, f"need 200 steps, rollout gave {report.steps}"
    assert sum(report.first[:200]) >= 2, "the 200 steps should span several episodes (resets)"
    expected = torch_policy_actions(ckpt, report, steps)
    np.testing.assert_allclose(np.array(report.actions[:steps]), expected, rtol=0, atol=1e-4)
    # closed loop with the torch backend and the same seed: same simulator trajectory, same actions
    torch_run = run_rollouts(ckpt, "Walker2d", episodes=20, seed=3, backend="torch", record=True, max_steps=120)
    np.testing.assert_allclose(np.array(torch_run.actions[:steps]), np.array(report.actions[:steps]), atol=1e-4)


def test_report_contents_and_table(walker):
    _, onnx_path = walker
    report = run_rollouts(onnx_path, None, episodes=2, seed=0, max_steps=30)  # None: the model's own task
    assert report.env_id == "Walker2d" and len(report.returns) == 2 and all(1 <= n <= 30 for n in report.lengths)
    assert report.steps == sum(report.lengths) and report.backend == "onnxruntime"
    lat = report.latency_us
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    console = Console(record=True, width=120)
    console.print(report.table())
    text = console.export_text()
    assert "Walker2d" in text and "p99" in text
    d = report.to_dict()
    assert d["mean_return"] == pytest.approx(np.mean(report.returns)) and "observations" not in d


def test_mismatched_env_is_refused(walker):
    _, onnx_path = walker
    with pytest.raises(ValueError, match=r"model expects \(17,\)"):
        run_rollouts(onnx_path, "Hopper", episodes=1)


def test_latency_stats_units():
    stats = latency_stats(np.array([1000, 2000, 3000, 100000]))
    assert stats["max"] == 100.0 and stats["p50"] == 2.5
