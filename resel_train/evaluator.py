"""Evaluation: the deterministic policy on the held-out tasks (where a task family has any), from a zero state.

Episode ``i`` of every evaluation resets the eval env with the same seed, so two evaluations of one
policy see the same tasks in the same order and return the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from resel_deploy.contract import ActionMapping
from resel_train.collector import EpisodeRecorder, PolicyRunner
from resel_train.config import TrainConfig
from resel_train.envs import make_env
from resel_train.nets.policy import Policy


@dataclass(frozen=True)
class EvalResult:
    """One evaluation at env step ``step``: the mean and spread of the episodes' returns, and the fraction
    of episodes that ended with ``info["success"]`` (None for tasks that do not report it)."""

    step: int
    mean_return: float
    std_return: float
    success_rate: float | None


class Evaluator:
    """The eval env and its episode seeds; it keeps no state between evaluations (nothing to checkpoint)."""

    def __init__(self, cfg: TrainConfig, actions: ActionMapping) -> None:
        self.seed, self.episodes, self.actions = cfg.seed + 10_000, cfg.eval_episodes, actions
        self.env = make_env(cfg.env, seed=self.seed, split="test")

    def run(self, policy: Policy, device: torch.device, step: int, episodes: int | None = None) -> EvalResult:
        """Run ``episodes`` (None: ``cfg.eval_episodes``) deterministic episodes of ``policy``; ``step`` labels it."""
        runner = PolicyRunner(policy, device)
        returns, successes = [], []
        for i in range(episodes or self.episodes):
            obs, _ = self.env.reset(seed=self.seed + i)
            episode = EpisodeRecorder(np.asarray(obs, np.float32))
            runner.reset()
            done = False
            while not done:
                action = runner.act(episode, deterministic=True, generator=None)
                obs, reward, terminated, truncated, info = self.env.step(self.actions.to_env(action))
                episode.add(action, float(reward), np.asarray(obs, np.float32))
                done = terminated or truncated
            returns.append(float(np.sum(episode.rew)))
            if "success" in info:
                successes.append(bool(info["success"]))
        return EvalResult(step, float(np.mean(returns)), float(np.std(returns)),
                          float(np.mean(successes)) if successes else None)
