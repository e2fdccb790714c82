"""LSTM and S5 through the trainer: a smoke run from the CLI's config path, a checkpoint that records
the encoder and its kwargs, and a policy that reloads from it for deployment."""

import numpy as np
import pytest
import torch

from resel_train.config import resolve_config
from resel_train.envs import task_info
from resel_train.persist.checkpoint import load_checkpoint
from resel_train.stepwise import StepwisePolicy
from resel_train.trainer import Trainer


@pytest.mark.parametrize("kind,kwargs", [("lstm", {"input_layers": 1}),
                                         ("s5", {"n_layers": 2, "d_state": 4, "input_layers": 1})])
def test_smoke_run_checkpoint_and_deploy(tmp_path, kind, kwargs):
    warmup = task_info("Pendulum-P").max_episode_steps
    overrides = ["model.s5.d_state=4", "model.s5.n_layers=2", "model.embed=16", "model.hidden=16", "algo.batch_size=32",
                 "algo.update_every=1",
                 f"warmup_steps={warmup}", f"eval_every={10**9}", f"checkpoint_every={10**9}", "eval_episodes=1",
                 "replay_capacity=20000", "threads=1"]
    cfg = resolve_config("Pendulum-P", overrides=overrides, steps=warmup + 4, out=str(tmp_path),
                         **{"model.encoder": kind})
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.policy.encoder.parameters()]
    result = trainer.train(show_progress=False)
    assert trainer.learner.agent.critic_steps == 4 and np.isfinite(result["critic_loss"])
    after = list(trainer.policy.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), "encoder never updated"
    data = load_checkpoint(trainer.run_dir / "checkpoint.pt")
    assert data["model"]["encoder"] == kind and data["model"]["encoder_kwargs"] == kwargs
    sp = StepwisePolicy.from_checkpoint(trainer.run_dir / "checkpoint.pt")
    action, state = sp.step(torch.zeros(1, sp.obs_dim), None, torch.ones(1), sp.initial_state(1))
    assert torch.isfinite(action).all() and len(state) == 2 + len(sp.policy.encoder.state_names())
