"""The Python API: learn -> save -> load -> predict equals the stepwise controller; callbacks; continuing; errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resel import RESeL
from resel.api import FORMATS
from resel_deploy import Controller
from resel_train.callbacks import BaseCallback, CheckpointCallback, EvalCallback, StopTrainingOnRewardThreshold
from resel_train.envs import make_env
from resel_train.persist.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Wind: 75-step episodes and the previous reward as a policy input (so predict's reward path is exercised)
TINY = {"model.mamba.d_state": 4, "model.mamba.d_conv": 4, "model.embed": 16, "model.hidden": 16, "model.mamba.dt_rank": 2,
        "algo.batch_size": 32, "algo.update_every": 1, "warmup_steps": 75, "eval_episodes": 1, "threads": 1}
WARMUP = 75


def tiny(tmp_path, env="Wind", **overrides) -> RESeL:
    return RESeL(env, out=str(tmp_path), **{**TINY, **overrides})


class Recorder(BaseCallback):
    """Logs every call with the step it saw; stops at ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def on_training_start(self) -> None:
        self.calls.append(("start", self.num_timesteps))

    def on_episode_end(self, episode_return: float) -> None:
        self.calls.append(("episode", self.num_timesteps))

    def on_step(self) -> bool:
        self.calls.append(("step", self.num_timesteps))
        return self.num_timesteps != self.stop_at

    def on_training_end(self) -> None:
        self.calls.append(("end", self.num_timesteps))


def rollout_pairs(model: RESeL, ckpt: Path, n_envs: int, steps: int = 110):
    """Predict and the torch controller side by side over ``steps`` steps of ``n_envs`` Wind envs, deterministic.

    Envs are reset by hand at step 40 (mid-episode) and when an episode ends; both sides are told.
    """
    envs = [make_env("Wind", seed=i) for i in range(n_envs)]
    obs = np.stack([e.reset(seed=i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    ctrl = Controller.load(ckpt, backend="torch", batch=n_envs)
    state, start, rewards = None, np.ones(n_envs, bool), np.zeros(n_envs, np.float32)
    for t in range(steps):
        single = n_envs == 1
        action, state = model.predict(obs[0] if single else obs, state, episode_start=start[0] if single else start,
                                      deterministic=True, reward=rewards[0] if single else rewards)
        expected = ctrl.step_batch(obs, rewards, is_first=start)
        yield t, np.reshape(action, (n_envs, -1)), expected
        start = np.zeros(n_envs, bool)
        for i, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(np.reshape(action, (n_envs, -1))[i])
            rewards[i] = r
            if term or trunc or t == 40:
                o, _ = env.reset(seed=100 + t)
                start[i], rewards[i] = True, 0.0
            obs[i] = o


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained just past the warm-up (updates ran), saved with its replay."""
    tmp = tmp_path_factory.mktemp("api")
    model = tiny(tmp)
    model.learn(WARMUP + 4)
    path = model.save(tmp / "wind.pt", include_replay=True)
    return model, path


@pytest.mark.parametrize("n_envs", [1, 3])
def test_predict_after_load_equals_the_torch_controller_step_by_step(trained, n_envs):
    model, path = trained
    assert model.trainer.learner.agent.critic_steps > 0  # past the warm-up: the weights are trained ones
    loaded = RESeL.load(path)
    assert loaded.num_timesteps == model.num_timesteps == WARMUP + 4 and loaded.env_id == "Wind"
    moved = 0.0
    for t, action, expected in rollout_pairs(loaded, path, n_envs):
        assert action.shape == expected.shape == (n_envs, 2)
        np.testing.assert_array_equal(action, expected, err_msg=f"step {t}")
        moved += float(np.abs(action).sum())
    assert moved > 0
    # the live model gives the same actions as the loaded one (same weights, same stepwise path)
    live = [a for _, a, _ in rollout_pairs(model, path, n_envs, steps=20)]
    again = [a for _, a, _ in rollout_pairs(loaded, path, n_envs, steps=20)]
    np.testing.assert_array_equal(np.stack(live), np.stack(again))


def test_predict_state_and_episode_start(trained):
    model, _ = trained
    obs = make_env("Wind", seed=0).reset(seed=0)[0]
    a0, s0 = model.predict(obs, deterministic=True)
    a1, s1 = model.predict(obs, s0, deterministic=True, reward=1.0)
    a_restart, _ = model.predict(obs, s1, episode_start=True, deterministic=True, reward=5.0)
    np.testing.assert_array_equal(a_restart, a0)  # a start ignores the state and the reward
    assert set(s0) == {"prev_obs", "prev_act", "block0.conv", "block0.ssm"} and s0["prev_obs"].shape == (1, 2)
    np.testing.assert_array_equal(s0["prev_obs"][0], obs.astype(np.float32))
    a_other_reward, _ = model.predict(obs, s0, deterministic=True, reward=-3.0)
    assert not np.array_equal(a1, a_other_reward)  # Wind feeds the previous reward to the policy
    spec = model.trainer.model_spec
    low, high = np.asarray(spec["action_low"]), np.asarray(spec["action_high"])
    sampled = np.stack([model.predict(obs)[0] for _ in range(20)])
    assert (sampled >= low).all() and (sampled <= high).all() and len(np.unique(sampled[:, 0])) > 1
    with pytest.raises(ValueError, match="reward="):
        model.predict(obs, s0, deterministic=True)
    with pytest.raises(ValueError, match="observation must have shape"):
        model.predict(np.zeros(5), deterministic=True)
    with pytest.raises(ValueError, match="state"):
        model.predict(np.zeros((3, 2)), s0, deterministic=True, reward=0.0)
    with pytest.raises(ValueError, match="episode_start"):
        model.predict(obs, s0, episode_start=[True, False], deterministic=True, reward=0.0)
    with pytest.raises(TypeError, match="observation"):
        model.predict("obs")


def test_save_is_a_checkpoint_every_command_takes(trained, tmp_path):
    model, path = trained
    run_ckpt = model.run_dir / "checkpoint.pt"
    assert path.read_bytes() == run_ckpt.read_bytes()
    assert load_checkpoint(path)["checksum"] == load_checkpoint(run_ckpt)["checksum"]
    assert (path.parent / load_checkpoint(path)["replay_file"]["name"]).is_file()
    from typer.testing import CliRunner

    from resel.cli.main import app

    result = CliRunner().invoke(app, ["eval", str(path), "--episodes", "1"])
    assert result.exit_code == 0 and "return" in result.output, result.output
    with pytest.raises(ValueError, match="export"):
        model.save(tmp_path / "p.onnx")


def test_export_onnx_matches_predict(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    model, _ = trained
    report = model.export(tmp_path / "wind.onnx")
    assert report.path == tmp_path / "wind.onnx" and report.max_scaled_error <= 1e-4
    ctrl = Controller.load(report.path, backend="onnxruntime")
    obs = make_env("Wind", seed=3).reset(seed=3)[0]
    np.testing.assert_allclose(ctrl.step(obs), model.predict(obs, deterministic=True)[0], atol=1e-5)
    with pytest.raises(ValueError, match="format"):
        model.export(tmp_path / "wind.bin")
    with pytest.raises(ValueError, match="format must be one of"):
        model.export(tmp_path / "wind.onnx", format="tflite")
    assert FORMATS == ("onnx", "tensorrt")


def test_callbacks_are_called_in_order_and_on_step_false_stops(tmp_path):
    model = tiny(tmp_path, eval_every=10**6, checkpoint_every=10**6)
    rec = Recorder(stop_at=WARMUP + 2)
    model.learn(WARMUP + 10, callbacks=[rec])
    assert model.num_timesteps == WARMUP + 2  # stopped right at that step
    steps = [s for kind, s in rec.calls if kind == "step"]
    assert rec.calls[0] == ("start", 0) and rec.calls[-1] == ("end", WARMUP + 2)
    assert steps == list(range(1, WARMUP + 3))
    assert ("episode", WARMUP) in rec.calls  # Wind's first episode ends at step 75, reported before on_step
    assert rec.calls.index(("episode", WARMUP)) == rec.calls.index(("step", WARMUP)) - 1
    assert rec.model is model and rec.trainer is model.trainer
    assert load_checkpoint(model.run_dir / "checkpoint.pt")["counters"]["env_steps"] == WARMUP + 2  # saved at the stop


def eval_rows(run_dir: Path) -> list[int]:
    with (run_dir / "metrics.csv").open() as f:
        return [int(float(r["step"])) for r in csv.DictReader(f) if r["eval_return"] != ""]


def test_default_evaluation_and_checkpoints_are_callbacks_that_can_be_replaced(tmp_path, monkeypatch):
    model = tiny(tmp_path / "a", eval_every=20, checkpoint_every=30, log_every=10**6)
    saves: list[int] = []
    original_save = model.trainer.save
    monkeypatch.setattr(model.trainer, "save", lambda: (saves.append(model.trainer.env_steps), original_save())[1])
    model.learn(WARMUP + 5)
    assert eval_rows(model.run_dir) == [20, 40, 60, WARMUP + 5]  # every eval_every and the last step
    assert saves == [30, 60, WARMUP + 5]  # every checkpoint_every, and the final save
    other = tiny(tmp_path / "b", eval_every=20, log_every=10**6)
    other.learn(WARMUP + 5, callbacks=[EvalCallback(eval_every=25, episodes=1)])
    assert eval_rows(other.run_dir) == [25, 50, 75, WARMUP + 5]  # replaced, not added to
    third = tiny(tmp_path / "c", eval_every=20, checkpoint_every=30, log_every=10**6)
    third.learn(WARMUP + 1, callbacks=[CheckpointCallback(every=10**6)])
    assert eval_rows(third.run_dir) == [20, 40, 60, WARMUP + 1]  # the default evaluation stays


def test_stop_on_reward_threshold_stops_at_the_first_evaluation(tmp_path):
    model = tiny(tmp_path, eval_every=20, log_every=10**6)
    model.learn(WARMUP + 5, callbacks=[StopTrainingOnRewardThreshold(-1e9)])
    assert model.num_timesteps == 20 and model.trainer.last_evaluation.step == 20


class Events(BaseCallback):
    """Logs the evaluations it receives and the steps it sees begin and end."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def on_step(self) -> bool:
        self.calls.append(("step", self.num_timesteps))
        return True

    def on_evaluation(self, result) -> bool:
        self.calls.append(("evaluation", result.step))
        assert result is self.trainer.last_evaluation and np.isfinite(result.mean_return)
        return True

    def on_step_end(self) -> None:
        self.calls.append(("step_end", self.num_timesteps))


def test_callbacks_receive_each_evaluation_and_the_end_of_each_step(tmp_path):
    model = tiny(tmp_path, eval_every=20, log_every=10**6)
    events = Events()
    model.learn(WARMUP + 5, callbacks=[events])
    assert [s for kind, s in events.calls if kind == "evaluation"] == eval_rows(model.run_dir) == [20, 40, 60, WARMUP + 5]
    at = events.calls.index(("evaluation", 20))  # the default EvalCallback evaluates in its on_step, before ours
    assert events.calls[at - 1:at + 3] == [("step_end", 19), ("evaluation", 20), ("step", 20), ("step_end", 20)]
    assert [s for kind, s in events.calls if kind == "step_end"] == list(range(1, WARMUP + 6))


def test_a_stop_on_evaluation_works_wherever_the_callback_stands(tmp_path):
    model = tiny(tmp_path, eval_every=10**6, log_every=10**6)
    model.learn(WARMUP + 5, callbacks=[StopTrainingOnRewardThreshold(-1e9), EvalCallback(eval_every=20, episodes=1)])
    assert model.num_timesteps == 20 and model.trainer.last_evaluation.step == 20


def test_learn_trains_that_many_more_steps_each_call_as_in_sb3(tmp_path):
    model = tiny(tmp_path / "run", eval_every=10**6, log_every=10)
    model.learn(WARMUP + 2)
    updates = model.trainer.learner.agent.critic_steps
    model.learn(4, reset_num_timesteps=False)  # SB3: 4 more, the reported counter keeps counting
    assert model.run_timesteps == WARMUP + 6 and model.num_timesteps == WARMUP + 6
    assert model.trainer.learner.agent.critic_steps == updates + 4
    with open(model.run_dir / "metrics.csv") as f:  # each step once: log_every, plus each learn's last step
        assert [int(float(r["step"])) for r in csv.DictReader(f)] == [10, 20, 30, 40, 50, 60, 70, 77, 80, 81]
    model.learn(4)  # reset_num_timesteps=True (the default): the reported counter restarts, the run's does not
    assert model.num_timesteps == 4 and model.run_timesteps == WARMUP + 10
    assert load_checkpoint(model.run_dir / "checkpoint.pt")["counters"]["env_steps"] == WARMUP + 10
    path = model.save(tmp_path / "m.pt", include_replay=True)
    # the uninterrupted continuation vs the same from the loaded file: identical next step
    expected = model.learn(2).trainer.policy.state_dict()
    loaded = RESeL.load(path)
    assert loaded.num_timesteps == WARMUP + 10  # a loaded model reports the run's steps until a learn resets it
    loaded.learn(2)
    assert loaded.run_dir == tmp_path / "m" and loaded.run_timesteps == WARMUP + 12 and loaded.num_timesteps == 2
    for name, tensor in loaded.trainer.policy.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), expected[name].numpy(), err_msg=name)
    bare = model.save(tmp_path / "bare.pt")  # without the replay: predict yes, learn no
    assert RESeL.load(bare).predict(np.zeros(2), deterministic=True)[0].shape == (2,)
    with pytest.raises(FileNotFoundError, match="include_replay=True"):
        RESeL.load(bare).learn(20)


def test_the_sb3_sequence_trains_twice_the_steps(tmp_path):
    """``model.learn(N); model.learn(N, reset_num_timesteps=False)`` trains 2N steps, as in SB3."""
    model = tiny(tmp_path, eval_every=10**6, log_every=10**6)
    model.learn(WARMUP + 5)
    model.learn(WARMUP + 5, reset_num_timesteps=False)
    assert model.num_timesteps == model.run_timesteps == 2 * (WARMUP + 5)
    assert load_checkpoint(model.run_dir / "checkpoint.pt")["counters"]["env_steps"] == 2 * (WARMUP + 5)
    assert model.trainer.learner.agent.critic_steps == 2 * (WARMUP + 5) - WARMUP  # one update per step after warm-up


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'algo.batch'"):
        tiny(tmp_path, **{"algo.batch": 3})
    with pytest.raises(ValueError, match="unknown config key 'algo.nope'"):
        RESeL("Wind", out=str(tmp_path), algo={"nope": 1})
    with pytest.raises(ValueError, match="'algo.batch_size' expects an integer"):
        RESeL("Wind", out=str(tmp_path), algo={"batch_size": "big"})
    with pytest.raises(ValueError, match="'algo.gamma'"):
        RESeL("Wind", out=str(tmp_path), **{"algo.gamma": 2.0})
    with pytest.raises(TypeError, match="seed must be int"):
        RESeL("Wind", seed="0")
    with pytest.raises(TypeError, match="env_id must be str"):
        RESeL(3)
    with pytest.raises(ValueError, match="preset"):
        RESeL("Wind", preset="fast", out=str(tmp_path))
    with pytest.raises(ValueError, match="'env' = 'Pendulum-P' .* disagrees with the task 'Wind'"):
        RESeL("Wind", out=str(tmp_path), env="Pendulum-P")
    model = RESeL("Wind", out=str(tmp_path), algo={"batch_size": 7}, **TINY)  # section dicts work too
    assert model.config.algo.batch_size == 32  # the dotted key given later wins
    with pytest.raises(TypeError, match="total_timesteps must be int"):
        model.learn(10.5)
    with pytest.raises(ValueError, match="total_timesteps must be >= 1"):
        model.learn(0)
    with pytest.raises(TypeError, match="callbacks must be BaseCallback"):
        model.learn(10, callbacks=[print])
    with pytest.raises(ValueError, match="eval_every must be >= 1"):
        EvalCallback(0)
    with pytest.raises(ValueError, match="total_timesteps=3 ends the run at step 3, before the warm-up"):
        model.learn(3)
    model.learn(WARMUP)
    with pytest.raises(FileExistsError, match="resume=True"):
        RESeL("Wind", out=str(tmp_path), **TINY)
    assert RESeL("Wind", out=str(tmp_path), resume=True, **TINY).num_timesteps == WARMUP


def test_import_resel_does_not_import_torch():
    code = "import resel, sys; assert 'torch' not in sys.modules, 'torch imported'; print(resel.__all__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "RESeL" in out.stdout and "EvalCallback" in out.stdout
