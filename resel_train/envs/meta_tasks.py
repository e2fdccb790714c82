"""Meta-RL tasks where the reward is an input of the policy (off-policy variBAD benchmark).

``CheetahDir`` / ``AntDir`` hide a direction (+1 or -1) in the reward, ``HalfCheetahVel`` hides a
target speed, ``Wind`` hides a constant drift of a 2-D point. The MuJoCo ones hold each task for
2 inner episodes of 200 steps (one Gymnasium episode = 400 steps) so the agent can use what it
learnt in the first inner episode in the second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from .common import TaskPool, require

INNER_STEPS = 200
EPISODES_PER_TASK = 2
POOL_SEED = 1337
POOL_SIZE = 60
N_TRAIN = 40

# Direction tasks have only two values: both splits hold both directions (test alternates +1, -1).
DIRECTION_POOL = (1.0, -1.0, 1.0, -1.0)
VEL_CTRL_COST = 0.05

WIND_STEPS = 75
WIND_MAX = 0.08
WIND_GOAL = (0.0, 1.0)
WIND_GOAL_RADIUS = 0.03
WIND_MAX_ACTION = 0.1

RewardFn = Callable[[float, np.ndarray, dict[str, Any]], float]


def velocity_pool() -> np.ndarray:
    """60 target speeds U[0, 3] from a fixed seed (first 40 train, last 20 test)."""
    return np.random.default_rng(POOL_SEED + 1).uniform(0.0, 3.0, size=POOL_SIZE)


def wind_pool() -> np.ndarray:
    """60 winds U(-0.08, 0.08)^2 from a fixed seed (first 40 train, last 20 test)."""
    return np.random.default_rng(POOL_SEED + 2).uniform(-WIND_MAX, WIND_MAX, size=(POOL_SIZE, 2))


def cheetah_dir_reward(direction: float, action: np.ndarray, info: dict[str, Any]) -> float:
    """Forward velocity times the hidden direction, plus HalfCheetah-v5's control cost."""
    return float(direction * info["x_velocity"] + info["reward_ctrl"])


def ant_dir_reward(direction: float, action: np.ndarray, info: dict[str, Any]) -> float:
    """Forward velocity times the hidden direction, plus Ant-v5's control, contact and alive terms."""
    return float(
        direction * info["x_velocity"] + info["reward_ctrl"] + info["reward_contact"] + info["reward_survive"]
    )


def cheetah_vel_reward(target: float, action: np.ndarray, info: dict[str, Any]) -> float:
    """-|v - v*| - 0.05 |a|^2 with v the forward velocity reported by HalfCheetah-v5."""
    a = np.asarray(action, dtype=np.float64)
    return float(-abs(info["x_velocity"] - target) - VEL_CTRL_COST * np.sum(a * a))


class MetaEpisodes(gym.Wrapper):
    """Holds one hidden task for ``episodes`` inner episodes of ``inner_steps`` steps each.

    Observation = inner observation ++ [done flag]. The flag is 1.0 on the observation returned by
    the last step of an inner episode, else 0.0. Between inner episodes the robot is reset (the
    task stays) and that step returns the fresh start observation with the flag at 1.0, so the next
    action is taken from the state the robot is really in; the observation the robot reached
    before the reset is kept in ``info["final_inner_observation"]``. The last inner episode ends
    the Gymnasium episode (time-limit truncation, added by ``TimeLimit`` outside this wrapper).
    The hidden task is in ``info["task"]`` and ``self.task`` (for logging, not for the agent).
    """

    def __init__(
        self,
        env: gym.Env,
        pool: TaskPool,
        reward_fn: RewardFn,
        inner_steps: int = INNER_STEPS,
        episodes: int = EPISODES_PER_TASK,
    ):
        super().__init__(env)
        self.pool = pool
        self.reward_fn = reward_fn
        self.inner_steps = inner_steps
        self.horizon = inner_steps * episodes
        space = env.observation_space
        self.observation_space = spaces.Box(
            low=np.append(space.low, 0.0).astype(np.float32),
            high=np.append(space.high, 1.0).astype(np.float32),
            dtype=np.float32,
        )
        self.task: float = float(pool.train[0])
        self._t = 0

    @staticmethod
    def _with_flag(obs: np.ndarray, flag: float) -> np.ndarray:
        return np.append(np.asarray(obs, dtype=np.float32), np.float32(flag))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw the next task from the split's pool (seeded by ``seed``) and start its first inner episode."""
        self.pool.seed(seed)
        self.task = float(self.pool.draw())
        obs, info = self.env.reset(seed=seed, options=options)
        self._t = 0
        info["task"] = self.task
        return self._with_flag(obs, 0.0), info

    def step(self, action):
        """One step with the task's reward; an inner episode that ends before the horizon restarts the inner env."""
        obs, _, terminated, truncated, info = self.env.step(action)
        reward = self.reward_fn(self.task, np.asarray(action), info)
        self._t += 1
        inner_end = self._t % self.inner_steps == 0
        info["task"] = self.task
        info["inner_episode_end"] = inner_end
        if inner_end and self._t < self.horizon and not terminated:
            info["final_inner_observation"] = self._with_flag(obs, 1.0)
            obs, _ = self.env.reset()
        return self._with_flag(obs, 1.0 if inner_end else 0.0), reward, terminated, truncated, info


def _mujoco_meta(robot: str, task_id: str, pool: TaskPool, reward_fn: RewardFn) -> gym.Env:
    require("mujoco", task_id)
    if robot == "HalfCheetah":
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

        inner: gym.Env = HalfCheetahEnv()
    else:
        from gymnasium.envs.mujoco.ant_v5 import AntEnv

        # A fallen ant is not an episode end here: the inner episode always lasts 200 steps.
        inner = AntEnv(terminate_when_unhealthy=False)
    env = MetaEpisodes(inner, pool, reward_fn)
    return TimeLimit(env, env.horizon)


def make_cheetah_dir(split: str = "train") -> gym.Env:
    """HalfCheetah that must run forward or backward; the direction is only seen through the reward."""
    return _mujoco_meta("HalfCheetah", "CheetahDir", TaskPool(DIRECTION_POOL, 2, split), cheetah_dir_reward)


def make_ant_dir(split: str = "train") -> gym.Env:
    """Ant that must walk along +x or -x; the direction is only seen through the reward."""
    return _mujoco_meta("Ant", "AntDir", TaskPool(DIRECTION_POOL, 2, split), ant_dir_reward)


def make_cheetah_vel(split: str = "train") -> gym.Env:
    """HalfCheetah that must hold a hidden target speed in [0, 3]."""
    return _mujoco_meta(
        "HalfCheetah", "HalfCheetahVel", TaskPool(velocity_pool(), N_TRAIN, split), cheetah_vel_reward
    )


class WindEnv(gym.Env):
    """2-D point pushed by a hidden constant wind; sparse reward 1 inside radius 0.03 of (0, 1).

    The point starts at the origin; each step adds the clipped action (|a_i| <= 0.1) and the wind.
    Episodes never terminate; ``TimeLimit`` truncates them after 75 steps.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, pool: TaskPool):
        self.pool = pool
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-WIND_MAX_ACTION, WIND_MAX_ACTION, shape=(2,), dtype=np.float32)
        self.goal = np.array(WIND_GOAL, dtype=np.float64)
        self.goal_radius = WIND_GOAL_RADIUS
        self.task = np.asarray(pool.train[0], dtype=np.float64)
        self.position = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw a wind from the split's pool and put the agent back at the origin."""
        super().reset(seed=seed)
        self.pool.seed(seed)
        self.task = np.asarray(self.pool.draw(), dtype=np.float64)
        self.position = np.zeros(2)
        return self.position.astype(np.float32), {"task": self.task.copy()}

    def step(self, action):
        """Move by the clipped action plus the wind; reward 1 inside the goal circle."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -WIND_MAX_ACTION, WIND_MAX_ACTION)
        self.position = self.position + a + self.task
        reward = 1.0 if np.linalg.norm(self.position - self.goal) <= self.goal_radius else 0.0
        return self.position.astype(np.float32), reward, False, False, {"task": self.task.copy()}


def make_wind(split: str = "train") -> gym.Env:
    """The Wind task with its 40/20 pool of winds, 75 steps per episode."""
    return TimeLimit(WindEnv(TaskPool(wind_pool(), N_TRAIN, split)), WIND_STEPS)
