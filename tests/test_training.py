"""Training side: critic target by hand, optimiser groups, smoke runs per family, exact resume, config."""

import dataclasses

import numpy as np
import pytest
import torch

from resel_train.algo import RESeL, UpdateNoise, parameter_groups
from resel_train.buffer import TrajectoryBuffer
from resel_train.config import auto_preset_note, resolve_config
from resel_train.learner import Prefetch, metrics_to_floats
from resel_train.persist.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from resel_train.trainer import Trainer

TINY = ["model.mamba.d_state=4", "model.mamba.d_conv=4", "model.embed=16", "model.hidden=16", "model.mamba.dt_rank=2",
        "algo.batch_size=64"]


def tiny_agent(**algo):
    cfg = resolve_config("Pendulum-V", overrides=TINY + [f"algo.{k}={v}" for k, v in algo.items()])
    return RESeL(1, 1, False, cfg.model, cfg.algo, seed=0)


def one_trajectory_batch(rew, terminated):
    buf = TrajectoryBuffer(1, 1, pad=3, seed=0)
    obs = np.arange(len(rew) + 1, dtype=np.float32)[:, None]
    buf.add_trajectory(obs, np.zeros((len(rew), 1), np.float32), np.asarray(rew, np.float32), terminated)
    return buf.sample(len(rew))


@pytest.mark.parametrize("terminated", [True, False])
def test_critic_target_by_hand(monkeypatch, terminated):
    """y_t = r_t + gamma (1 - term_t) (min over the drawn head pair of Q'(o_{t+1}) - alpha log pi)."""
    agent = tiny_agent(gamma=0.5, fixed_alpha=0.1)
    log_prob = 0.25
    monkeypatch.setattr("resel_train.action_space.sample_squashed",
                        lambda m, s, noise: (torch.zeros_like(m), torch.full_like(m, log_prob)))
    values = torch.arange(8, dtype=torch.float32) * 10.0  # head k: 10k + 2 * obs
    monkeypatch.setattr(agent.critic_target, "q",
                        lambda obs, act, ctx, heads=None: (values if heads is None else values[heads]) + 2.0 * obs)
    batch = one_trajectory_batch([1.0, 2.0, 3.0], terminated)
    noise = UpdateNoise(target=torch.zeros(*batch.reset.shape, 1), head_pair=torch.tensor([5, 3]))
    y = agent.critic_target_value(batch, noise)[0, :3, 0]
    low_head = 30.0  # min(heads[5], heads[3])
    expected = []
    for t, r in enumerate([1.0, 2.0, 3.0]):
        next_obs = t + 1.0
        bootstrap = 0.0 if (terminated and t == 2) else 1.0
        expected.append(r + 0.5 * bootstrap * (low_head + 2.0 * next_obs - 0.1 * log_prob))
    torch.testing.assert_close(y, torch.tensor(expected))


def test_update_noise_follows_the_policy_delay_and_the_generator():
    agent = tiny_agent(policy_delay=2)
    first = agent.draw_noise(3, 10)
    assert first.target.shape == (3, 10, 1) and first.policy is None  # critic step 1 of 2
    agent.critic_steps += 1
    second = agent.draw_noise(3, 10)
    assert second.policy is not None and second.policy.shape == (3, 10, 1)
    pair = second.head_pair.tolist()
    assert len(set(pair)) == 2 and all(0 <= k < 8 for k in pair)
    replay = tiny_agent(policy_delay=2)
    torch.testing.assert_close(replay.draw_noise(3, 10).target, first.target, rtol=0, atol=0)


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_optimiser_groups_split_encoder_from_the_rest():
    agent = tiny_agent(policy_lr=1e-3, critic_lr=2e-3, encoder_lr=1e-5)
    for net, opt, lr_other in ((agent.policy, agent.policy_opt, 1e-3), (agent.critic, agent.critic_opt, 2e-3)):
        enc, other = opt.param_groups
        assert (enc["name"], enc["lr"], other["name"], other["lr"]) == ("context_encoder", 1e-5, "other", lr_other)
        # on a CPU each group is one buffer that the network's parameters are views of
        assert len(enc["params"]) == len(other["params"]) == 1
        in_enc = {id(p) for p in net.parameters() if shares_storage(p, enc["params"][0])}
        in_other = {id(p) for p in net.parameters() if shares_storage(p, other["params"][0])}
        assert in_enc == {id(p) for p in net.encoder.parameters()}
        assert in_other == {id(p) for p in net.parameters()} - in_enc
        assert enc["params"][0].numel() == sum(p.numel() for p in net.encoder.parameters())
        names = {n for n, p in net.named_parameters() if id(p) in in_enc}
        assert names and all(n.startswith("encoder.") for n in names)
        assert any(n.startswith("encoder.blocks.0.mixer.") for n in names)
    assert parameter_groups(agent.policy, 1.0, 2.0)[0]["lr"] == 2.0
    assert not any(p.requires_grad for p in agent.critic_target.parameters())


def test_policy_loss_does_not_train_the_critic():
    agent = tiny_agent()
    batch = one_trajectory_batch([1.0] * 20, False)
    before = [p.detach().clone() for p in agent.critic.parameters()]
    policy_out = agent.policy(*agent._history(batch), batch.reset)[:2]
    agent._policy_and_alpha_step(batch, policy_out, torch.randn(policy_out[0].shape))
    assert all(torch.equal(a, b) for a, b in zip(before, agent.critic.parameters()))
    assert all(p.grad is None or not p.grad.any() for p in agent.critic.parameters())


def small_cfg(env, tmp_path, steps_after_warmup=2, **flags):
    from resel_train.envs import task_info

    warmup = task_info(env).max_episode_steps
    overrides = TINY + [f"warmup_steps={warmup}", f"eval_every={10**9}", f"checkpoint_every={10**9}",
                        "eval_episodes=1", "algo.batch_size=32", "replay_capacity=20000", "threads=1"]
    family = task_info(env).family  # pinned: the same config on a CPU and a CUDA machine
    return resolve_config(env, family, overrides=overrides, steps=warmup + steps_after_warmup, out=str(tmp_path),
                          **flags)


@pytest.mark.parametrize("env", ["Pendulum-P", "CartPole-V", "Hopper", "Walker2d-gravity", "HopperBLT-V",
                                 "HalfCheetahVel", "Wind"])
def test_two_update_smoke_run_per_family(tmp_path, env):
    from resel_train.envs import task_info

    simulator = {"mujoco": "mujoco", "gravity": "mujoco", "meta": "mujoco", "pybullet": "pybullet"}
    pytest.importorskip(simulator.get(task_info(env).family, "gymnasium"), reason=f"{env} needs its simulator: "
                        "pip install 'resel[sim]'")
    trainer = Trainer(small_cfg(env, tmp_path))
    result = trainer.train(show_progress=False)
    assert trainer.learner.agent.critic_steps == 2
    assert np.isfinite(result["critic_loss"])
    data = load_checkpoint(trainer.run_dir / "checkpoint.pt")
    assert data["model"]["task_id"] == env and data["counters"]["env_steps"] == trainer.cfg.steps
    assert (trainer.run_dir / "metrics.csv").exists() and (trainer.run_dir / "config.yaml").exists()


def test_resume_gives_exactly_the_same_next_update(tmp_path):
    cfg = small_cfg("Pendulum-V", tmp_path, steps_after_warmup=5)
    first = Trainer(cfg)
    first.train(show_progress=False)  # checkpoints at the end
    uninterrupted = first.learner.update_once()
    resumed = Trainer(cfg, resume=True)
    assert resumed.env_steps == first.env_steps
    assert resumed.learner.buffer.num_trajectories == first.learner.buffer.num_trajectories
    after_resume = resumed.learner.update_once()
    if first.device.type == "cpu":  # bit-identical
        assert metrics_to_floats(after_resume) == metrics_to_floats(uninterrupted)
        for (name, a), b in zip(first.learner.agent.state_dict().items(), resumed.learner.agent.state_dict().values()):
            assert torch.equal(a, b), name
    else:  # CUDA reductions (cuBLAS, the Triton scan's atomic dB/dC sums) do not fix their order: close
        np.testing.assert_allclose(list(metrics_to_floats(after_resume).values()),
                                   list(metrics_to_floats(uninterrupted).values()), rtol=1e-4, atol=1e-6)
        for (name, a), b in zip(first.learner.agent.state_dict().items(), resumed.learner.agent.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path):
    cfg = small_cfg("Pendulum-V", tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        Trainer(cfg, resume=True)
    Trainer(cfg).save()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg)


def test_checkpoints_reject_corrupt_foreign_and_pickled_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {}, "x": torch.ones(2)})
    assert load_checkpoint(good)["x"].sum() == 2
    assert not list(tmp_path.glob("*.tmp"))  # nothing left behind by the atomic write
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable RESeL checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a RESeL checkpoint"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "resel-checkpoint", "version": 1, "obj": np.random.default_rng(0)}, pickled)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(pickled)


def test_config_presets_files_and_overrides(tmp_path):
    gravity = resolve_config("Walker2d-gravity", device="cuda")  # auto on a GPU: the paper's family preset
    assert (gravity.preset, gravity.algo.batch_size, gravity.steps) == ("gravity", 1000, 2_000_000)
    assert (gravity.algo.policy_lr, gravity.algo.critic_lr, gravity.algo.encoder_lr) == (6e-5, 2e-4, 2e-6)
    cheetah = resolve_config("HalfCheetah", device="cuda")
    assert (cheetah.algo.policy_lr, cheetah.algo.encoder_lr, cheetah.algo.alpha_lr) == (3e-4, 1e-5, 5e-4)
    assert resolve_config("AntBLT-V", "pybullet").algo.batch_size == 128
    assert resolve_config("WalkerBLT-P", "pybullet").algo.encoder_lr == 5e-6
    assert resolve_config("Hopper", device="cuda").algo.target_entropy == 0.0
    file = tmp_path / "c.toml"
    file.write_text("seed = 7\n[algo]\nbatch_size = 300\n[model]\nencoder = 'gru'\n")
    cfg = resolve_config("Pendulum-V", config_file=file, overrides=["algo.gamma=0.9", "steps=2e4"], seed=9)
    assert (cfg.seed, cfg.algo.batch_size, cfg.model.encoder, cfg.algo.gamma, cfg.steps) == (9, 300, "gru", 0.9, 20000)
    with pytest.raises(ValueError, match="unknown config key 'algo.lr'"):
        resolve_config("Pendulum-V", overrides=["algo.lr=1"])
    with pytest.raises(ValueError, match="Unknown task id"):
        resolve_config("Walker3d")


def test_auto_preset_is_the_cpu_variant_without_a_gpu(monkeypatch):
    """auto: the family preset on CUDA, the cpu variant (with the family's task settings) elsewhere."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = resolve_config("Walker2d-gravity")
    cpu = resolve_config("Walker2d-gravity", "cpu")
    assert (auto.preset, auto.algo.batch_size, auto.model.hidden) == ("cpu", 256, 64)
    assert dataclasses.asdict(auto) == dataclasses.asdict(cpu)
    assert resolve_config("Walker2d-gravity", device="cpu").preset == "cpu"
    assert resolve_config("Walker2d-gravity", device="cuda:0").preset == "gravity"
    assert resolve_config("Walker2d-gravity", overrides=["device=cuda"]).preset == "gravity"
    assert resolve_config("Walker2d-gravity", "gravity").algo.batch_size == 1000  # asked for by name: kept
    assert resolve_config("Hopper").algo.target_entropy == 0.0  # the task's own settings survive
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_config("Walker2d-gravity").preset == "gravity"
    assert "--preset gravity" in auto_preset_note("Walker2d-gravity")


def test_prefetched_batches_equal_sampling_on_the_spot():
    """Prefetching (kept, or redrawn after the replay changed) gives the batches on-the-spot sampling gives."""
    rng = np.random.default_rng(0)
    lengths = (5, 9, 14, 7, 3, 11, 6, 8, 4, 12, 10, 13)
    trajectories = [(rng.normal(size=(n + 1, 2)), rng.normal(size=(n, 1)), rng.normal(size=n)) for n in lengths]
    spot, ahead = TrajectoryBuffer(2, 1, pad=3, seed=1), TrajectoryBuffer(2, 1, pad=3, seed=1)
    for buf in (spot, ahead):
        for obs, act, rew in trajectories[4:]:  # batches of 12 transitions draw a random subset of these
            buf.add_trajectory(obs, act, rew, False)
    prefetch = Prefetch()
    for step in range(6):
        if step in (2, 3):  # an episode ends between the prefetch and its use
            for buf in (spot, ahead):
                buf.add_trajectory(*trajectories[step], False)
        expected = spot.sample(12)
        got = prefetch.take(ahead, 12)
        assert all(torch.equal(getattr(expected, k), getattr(got, k)) for k in ("obs", "act", "reset", "mask")), step
        prefetch.draw(ahead, 12)
        saved = prefetch.replay_state(ahead)["rng_state"]
        assert np.array_equal(saved, spot.state_dict()["rng_state"])  # a checkpoint holds the on-the-spot state


def test_every_evaluation_sees_the_same_held_out_tasks(tmp_path):
    """Two evaluations of one policy on Walker2d-gravity: the same test gravities in the same order, the same returns."""
    pytest.importorskip("mujoco")
    trainer = Trainer(small_cfg("Walker2d-gravity", tmp_path))
    env, scales = trainer.evaluator.env, []
    original_reset = env.reset

    def recording_reset(**kwargs):
        obs, info = original_reset(**kwargs)
        scales.append(env.get_wrapper_attr("gravity_scale"))
        return obs, info

    env.reset = recording_reset
    first, second = trainer.evaluate(episodes=3), trainer.evaluate(episodes=3)
    assert scales[:3] == scales[3:] and len(set(scales[:3])) == 3
    assert first == second


def test_tensorboard_tags_are_grouped_and_the_config_is_logged_as_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    trainer = Trainer(small_cfg("Pendulum-V", tmp_path, steps_after_warmup=4))
    trainer.train(show_progress=False)
    events = EventAccumulator(str(trainer.run_dir / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"losses/critic_loss", "losses/policy_loss", "eval/return", "train/train_return", "train/alpha",
            "train/critic_grad_norm", "time/steps_per_s"} <= scalars
    assert all("/" in tag for tag in scalars)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["algo.batch_size"].number_value == trainer.cfg.algo.batch_size
    assert start.hparams["env"].string_value == "Pendulum-V"


@pytest.mark.parametrize("flat", [True, False])
def test_the_logged_gradient_norm_is_the_global_l2_norm(flat):
    """The critic/policy grad norms (logged, and watched by the divergence guard) against float64 by hand."""
    from resel_train.flat_params import ParamGroups

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ELU(), torch.nn.Linear(7, 3))
    groups = ParamGroups([{"params": list(net[0].parameters())}, {"params": list(net[2].parameters())}], flat)
    groups.zero_grad()
    assert float(groups.grad_norm()) == 0.0
    net[0].bias.requires_grad_(False)  # a parameter without a gradient adds nothing
    net(torch.randn(4, 5)).pow(2).sum().backward()
    by_hand = sum(float(p.grad.double().pow(2).sum()) for p in net.parameters() if p.grad is not None) ** 0.5
    assert abs(float(groups.grad_norm()) - by_hand) <= 1e-6 * by_hand
