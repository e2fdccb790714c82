"""MuJoCo locomotion (Gymnasium v5): the plain MDPs and the gravity-randomised task distribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from .common import Float32Observation, TaskPool, require

ROBOTS = ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid")
EPISODE_STEPS = 1000

# Gravity pool: fixed so every run, seed and worker trains and tests on the same tasks.
GRAVITY_POOL_SEED = 1337
GRAVITY_POOL_SIZE = 60
GRAVITY_N_TRAIN = 40
GRAVITY_BASE = 1.5


def gravity_log_limit(robot: str) -> float:
    """Scale = 1.5 ** U(-limit, limit); Humanoid gets a narrower range (it cannot stand in 3.4 g)."""
    return 2.0 if robot == "Humanoid" else 3.0


def gravity_pool(robot: str) -> np.ndarray:
    """The 60 gravity scales for ``robot`` (first 40 train, last 20 test), identical in every process."""
    limit = gravity_log_limit(robot)
    rng = np.random.default_rng(GRAVITY_POOL_SEED)
    return GRAVITY_BASE ** rng.uniform(-limit, limit, size=GRAVITY_POOL_SIZE)


def _make_v5(robot: str, task_id: str, **kwargs: Any) -> gym.Env:
    require("mujoco", task_id)
    env = gym.make(f"{robot}-v5", max_episode_steps=EPISODE_STEPS, **kwargs)
    return Float32Observation(env)


def make_mdp(robot: str, split: str = "train") -> gym.Env:
    """The standard v5 task with float32 observations and a 1000-step time limit (split is ignored)."""
    return _make_v5(robot, robot)


class GravityWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Scales the z-gravity of the MuJoCo model by a hidden task drawn at every reset.

    ``model.opt.gravity`` is not touched by MuJoCo's reset, so setting it before the inner reset
    makes the whole episode run under the new gravity. The scale is reported in
    ``info["gravity_scale"]`` and ``self.gravity_scale`` (for logging and tests, not for the agent).
    """

    def __init__(self, env: gym.Env, scales: Sequence[float], n_train: int, split: str):
        gym.utils.RecordConstructorArgs.__init__(self, scales=scales, n_train=n_train, split=split)
        gym.Wrapper.__init__(self, env)
        self.pool = TaskPool(scales, n_train, split)
        self._opt = env.unwrapped.model.opt
        self._base_gravity = np.array(self._opt.gravity, dtype=np.float64)
        self.gravity_scale = 1.0

    def _set_scale(self, scale: float) -> None:
        self.gravity_scale = float(scale)
        gravity = self._base_gravity.copy()
        gravity[2] *= self.gravity_scale
        self._opt.gravity[:] = gravity

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw the episode's gravity scale from the split's pool, then reset the simulator."""
        self.pool.seed(seed)
        self._set_scale(self.pool.draw())
        obs, info = self.env.reset(seed=seed, options=options)
        info["gravity_scale"] = self.gravity_scale
        return obs, info

    def step(self, action):
        """The simulator's step, with the episode's gravity scale in ``info``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["gravity_scale"] = self.gravity_scale
        return obs, reward, terminated, truncated, info


def make_gravity(robot: str, split: str = "train") -> gym.Env:
    """``<robot>-gravity``: 40 training gravities sampled per episode, or the 20 test ones in turn."""
    env = _make_v5(robot, f"{robot}-gravity")
    return GravityWrapper(env, gravity_pool(robot).tolist(), GRAVITY_N_TRAIN, split)
