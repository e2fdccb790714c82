"""Classic small POMDPs for quick runs (pomdp-baselines): Pendulum and CartPole, -P / -V variants.

RESeL is a continuous-action SAC, so CartPole gets a continuous form (``ContinuousCartPoleEnv``).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.wrappers import TimeLimit

from .common import Float32Observation, SelectObservation

PENDULUM_STEPS = 200
CARTPOLE_STEPS = 500

# Pendulum obs: cos(theta), sin(theta), theta_dot.  CartPole obs: x, x_dot, theta, theta_dot.
POMDP_INDICES = {
    "Pendulum": {"P": (0, 1), "V": (2,)},
    "CartPole": {"P": (0, 2), "V": (1, 3)},
}


class ContinuousCartPoleEnv(CartPoleEnv):
    """Gymnasium's CartPole physics driven by a continuous force.

    Action: Box(-1, 1, (1,)), force = 10 * a (clipped), instead of the discrete +-10 N push.
    Reward 1 per step (the failing step included, as in CartPole-v1); terminates when the pole
    leaves +-12 degrees or the cart leaves +-2.4; the time limit (500) is added by ``TimeLimit``.
    """

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def step(self, action):
        """Apply a force in [-1, 1] (scaled to the cart's force magnitude) for one time step."""
        assert self.state is not None, "Call reset before using step method."
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        force = self.force_mag * a
        x, x_dot, theta, theta_dot = self.state
        cos, sin = np.cos(theta), np.sin(theta)
        # Same equations and explicit Euler step as gymnasium's CartPoleEnv.step.
        temp = (force + self.polemass_length * theta_dot**2 * sin) / self.total_mass
        theta_acc = (self.gravity * sin - cos * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * cos**2 / self.total_mass)
        )
        x_acc = temp - self.polemass_length * theta_acc * cos / self.total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * x_acc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * theta_acc
        self.state = np.array((x, x_dot, theta, theta_dot), dtype=np.float64)
        terminated = bool(abs(x) > self.x_threshold or abs(theta) > self.theta_threshold_radians)
        return np.array(self.state, dtype=np.float32), 1.0, terminated, False, {}


def make_pendulum(kind: str | None = None, split: str = "train") -> gym.Env:
    """``Pendulum`` (full), ``Pendulum-P`` (cos, sin) or ``Pendulum-V`` (angular velocity)."""
    env = gym.make("Pendulum-v1", max_episode_steps=PENDULUM_STEPS)
    return SelectObservation(env, POMDP_INDICES["Pendulum"][kind]) if kind else Float32Observation(env)


def make_cartpole(kind: str | None = None, split: str = "train") -> gym.Env:
    """``CartPole`` (full), ``CartPole-P`` (x, theta) or ``CartPole-V`` (x_dot, theta_dot)."""
    env: gym.Env = TimeLimit(ContinuousCartPoleEnv(), CARTPOLE_STEPS)
    return SelectObservation(env, POMDP_INDICES["CartPole"][kind]) if kind else env
