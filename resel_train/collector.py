"""Experience collection: the training env stepped by the live policy, one whole trajectory per episode.

The policy runs through :class:`~resel_train.stepwise.StepwisePolicy` at batch 1 -- the step that is
exported and deployed -- and its actions reach the env through the deploy contract's
:class:`~resel_deploy.contract.ActionMapping`. During the warm-up the actions are uniform random
draws instead. Only finished episodes leave the collector (the replay stores whole trajectories).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from resel_deploy.contract import ActionMapping
from resel_train.config import TrainConfig
from resel_train.envs import make_env
from resel_train.nets.policy import Policy
from resel_train.stepwise import StepwisePolicy


class EpisodeRecorder:
    """The growing trajectory of the current episode (what enters the replay when it ends)."""

    def __init__(self, obs: np.ndarray) -> None:
        self.obs = [obs]
        self.act: list[np.ndarray] = []
        self.rew: list[float] = []

    def add(self, act: np.ndarray, rew: float, next_obs: np.ndarray) -> None:
        """Append one step: the action taken, its reward and the observation it led to."""
        self.act.append(act)
        self.rew.append(rew)
        self.obs.append(next_obs)

    @property
    def is_first(self) -> bool:
        """No step taken yet: the policy's next call starts from a zero memory."""
        return not self.act


class PolicyRunner:
    """Steps the policy one environment step at a time (batch 1) through :class:`StepwisePolicy`: the
    same model and step that are exported and deployed, wrapped around the live training weights."""

    def __init__(self, policy: Policy, device: torch.device) -> None:
        self.stepwise = StepwisePolicy(policy, live=True).to(device)
        self.device, self.space, self.act_dim = device, policy.space, policy.act_dim
        self.reset()

    def reset(self) -> None:
        """Forget the episode: the next :meth:`act` starts from the zero state."""
        self.state = self.stepwise.initial_state(1, self.device)

    @torch.no_grad()
    def act(self, episode: EpisodeRecorder, deterministic: bool, generator: torch.Generator | None) -> np.ndarray:
        """The next action as the replay stores it: in [-1, 1], or one-hot for a discrete policy.

        A stochastic action draws its noise on the CPU ``generator`` (reproducible on any device).
        """
        as_row = lambda x: torch.as_tensor(np.asarray(x, np.float32), device=self.device).reshape(1, -1)  # noqa: E731
        noise = torch.zeros(1, self.act_dim) if deterministic else self.space.exploration_noise(1, generator)
        out = self.stepwise(as_row(episode.obs[-1]), as_row([episode.rew[-1] if episode.rew else 0.0]),
                            torch.tensor([float(episode.is_first)], device=self.device), noise.to(self.device),
                            *self.state)
        self.state = tuple(out[3:])
        return self.state[1][0].cpu().numpy()  # the state's prev_act: squashed action / one-hot

    def replace_action(self, action: np.ndarray) -> None:
        """The action actually taken was another one (warm-up): the next step must see it as prev_act."""
        taken = torch.as_tensor(np.asarray(action, np.float32), device=self.device).reshape(1, -1)
        self.state = (self.state[0], taken, *self.state[2:])


@dataclass(frozen=True)
class Trajectory:
    """One finished episode: ``obs`` has one row more than ``act`` and ``rew``; ``total_return`` is the
    undiscounted sum of its rewards (in float64, as the env returned them)."""

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    terminated: bool
    total_return: float


class Collector:
    """The training env, the policy stepping it, the episode in progress and the collection RNGs.

    State (:meth:`state_dict`): the step and episode counters and both RNGs -- the numpy generator
    of warm-up actions and the CPU torch generator of the policy's action noise. A resumed run
    starts a fresh episode (the one in progress was never stored).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.seed, self.warmup_steps = cfg.seed, cfg.warmup_steps
        self.env = make_env(cfg.env, seed=cfg.seed)
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        # the deploy contract's mapping (the exported graph's): one-hot -> index, or [-1, 1] -> the finite bounds
        self.actions = ActionMapping.from_space(self.env.action_space)
        self.act_dim = self.actions.act_dim
        self.rng = np.random.default_rng(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.env_steps = 0
        self.episodes = 0
        self.recent_returns: deque[float] = deque(maxlen=10)  # of this process's episodes (not saved)
        self._runner: PolicyRunner | None = None
        self._episode: EpisodeRecorder | None = None

    def begin(self, policy: Policy, device: torch.device) -> None:
        """Start a fresh episode, acting with ``policy`` (called when training starts or resumes)."""
        self._runner = PolicyRunner(policy, device)
        self._episode = self._reset()

    def _reset(self) -> EpisodeRecorder:
        obs, _ = self.env.reset(seed=self.seed + self.episodes)
        return EpisodeRecorder(np.asarray(obs, np.float32))

    def step(self) -> Trajectory | None:
        """One environment step; returns the episode when it ended (a new one has then begun)."""
        runner, episode = self._runner, self._episode
        action = runner.act(episode, deterministic=False, generator=self.generator)
        if self.env_steps < self.warmup_steps:
            action = runner.space.random_action(self.rng)
            runner.replace_action(action)
        next_obs, reward, terminated, truncated, _ = self.env.step(self.actions.to_env(action))
        episode.add(action.astype(np.float32), float(reward), np.asarray(next_obs, np.float32))
        self.env_steps += 1
        if not (terminated or truncated):
            return None
        done = Trajectory(np.stack(episode.obs), np.stack(episode.act), np.asarray(episode.rew, np.float32),
                          bool(terminated), float(np.sum(episode.rew)))
        self.recent_returns.append(done.total_return)
        self.episodes += 1
        self._episode = self._reset()
        runner.reset()
        return done

    def state_dict(self) -> dict:
        """The counters and RNG states a resumed run continues from."""
        return {"env_steps": self.env_steps, "episodes": self.episodes, "rng": self.rng.bit_generator.state,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s counters and RNG states."""
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
