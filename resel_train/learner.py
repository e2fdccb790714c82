"""Learning: the SAC agent, its replay of whole trajectories, the (CUDA-graphed) update and the divergence guard.

On a GPU the update runs asynchronously: the next batch is sampled right after the launch, while
the GPU works (:class:`Prefetch`), and metrics stay on the device until they are logged.
"""

from __future__ import annotations

import numpy as np
import torch

from resel_train.algo import RESeL
from resel_train.buffer import Batch, TrajectoryBuffer
from resel_train.collector import Trajectory
from resel_train.config import TrainConfig
from resel_train.envs import task_info
from resel_train.graphed_update import GraphedUpdate
from resel_train.guard import DivergenceGuard
from resel_train.nets.policy import Policy
from resel_train.nets.registry import encoder_spec


def metrics_to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Device metrics to floats with one host synchronisation (at log time, not per update)."""
    if not metrics:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).cpu().tolist()
    return dict(zip(metrics, values))


class Prefetch:
    """The next update's batch, sampled early (while the GPU runs the current update) without changing any sample.

    A prefetched batch is used only if the replay has not changed since it was drawn; otherwise the
    replay's generator is rewound and the batch redrawn from the new contents. Either way update k
    gets ``sample(replay after env step k, generator state after update k - 1)``, exactly what
    sampling on the spot would give, and a checkpoint stores the rewound generator state.
    """

    def __init__(self) -> None:
        self._batch: Batch | None = None
        self._rng_state: dict | None = None
        self._version = -1

    def draw(self, buffer: TrajectoryBuffer, batch_size: int) -> None:
        """Sample the next batch now, remembering the replay's version and generator state before it."""
        self._rng_state, self._version = buffer.rng_state, buffer.version
        self._batch = buffer.sample(batch_size)

    def take(self, buffer: TrajectoryBuffer, batch_size: int) -> Batch:
        """The prefetched batch if the replay is unchanged since :meth:`draw`, else one redrawn on the spot."""
        batch, self._batch = self._batch, None
        if batch is not None and self._version == buffer.version:
            return batch
        if batch is not None:
            buffer.rng_state = self._rng_state
        return buffer.sample(batch_size)

    def replay_state(self, buffer: TrajectoryBuffer) -> dict:
        """``buffer.state_dict()`` as if nothing had been prefetched (what a resumed run must start from)."""
        if self._batch is None:
            return buffer.state_dict()
        now, buffer.rng_state = buffer.rng_state, self._rng_state
        try:
            return buffer.state_dict()
        finally:
            buffer.rng_state = now


class Learner:
    """The agent, its replay and its updates.

    State (:meth:`state_dict`): the networks, optimisers, alpha and update counters of the agent,
    and the replay (saved in the run's replay file, see :mod:`resel_train.persist.layout`).
    """

    def __init__(self, cfg: TrainConfig, obs_dim: int, act_dim: int, device: torch.device) -> None:
        info = task_info(cfg.env)
        self.cfg, self.device = cfg, device
        self.agent = RESeL(obs_dim, act_dim, info.reward_as_input, cfg.model, cfg.algo, cfg.seed, device,
                           discrete=info.discrete)
        self.graphed_update = GraphedUpdate(self.agent) if self.uses_cuda_graphs else None
        self.prefetch = Prefetch()
        self.buffer = TrajectoryBuffer(  # the padding the encoder needs between packed trajectories
            obs_dim, act_dim, cfg.replay_capacity, pad=encoder_spec(cfg.model.encoder).replay_pad(cfg.model),
            seed=cfg.seed
        )
        self.guard = DivergenceGuard(
            {"policy": self.agent.policy, "critic": self.agent.critic, "critic_target": self.agent.critic_target},
            {"log_alpha": self.agent.log_alpha},
        )
        self.metrics: dict[str, torch.Tensor] = {}  # the latest value of each, read only when logged

    @property
    def policy(self) -> Policy:
        """The live policy network (collection, evaluation and export all use these weights)."""
        return self.agent.policy

    @property
    def uses_cuda_graphs(self) -> bool:
        """Graphs on CUDA unless switched off or the encoder cannot be captured (its registry entry says; the
        GRU's and LSTM's cuDNN layout, one trajectory per row, needs a host sync per call, so they run eagerly)."""
        return (self.device.type == "cuda" and self.cfg.cuda_graphs
                and encoder_spec(self.cfg.model.encoder).cuda_graphs)

    def add(self, trajectory: Trajectory) -> None:
        """Store a finished episode in the replay."""
        self.buffer.add_trajectory(trajectory.obs, trajectory.act, trajectory.rew, trajectory.terminated)

    def after_env_step(self, env_steps: int) -> None:
        """Update once if this step is due one (past the warm-up, every ``algo.update_every`` steps)."""
        if (env_steps > self.cfg.warmup_steps and self.buffer.num_trajectories
                and env_steps % self.cfg.algo.update_every == 0):
            self.metrics.update(self.update_once())
            self.guard.observe(env_steps, self.metrics)

    def update_once(self) -> dict[str, torch.Tensor]:
        """Sample, draw the update's noise on the host, launch one update; its metrics stay on the device."""
        batch = self.prefetch.take(self.buffer, self.cfg.algo.batch_size)
        noise = self.agent.draw_noise(*batch.reset.shape)
        if self.graphed_update is not None:
            metrics = self.graphed_update(batch, noise)
        else:
            if self.device.type != "cpu":  # from pinned host memory: the copies overlap with queued GPU work
                batch = batch.pin_memory().to(self.device, non_blocking=True)
                noise = noise.pin_memory().to(self.device, non_blocking=True)
            metrics = self.agent.update(batch, noise)
        self.prefetch.draw(self.buffer, self.cfg.algo.batch_size)
        return metrics

    def check(self, env_steps: int) -> None:
        """Raise :class:`~resel_train.guard.TrainingDiverged` if an update or a parameter went non-finite."""
        self.guard.check(env_steps)

    def metric_floats(self) -> dict[str, float]:
        """The latest update metrics as floats (one host synchronisation)."""
        return metrics_to_floats(self.metrics)

    def state_dict(self) -> dict:
        """Networks, optimisers, alpha, update counters and the replay (as if nothing had been prefetched)."""
        replay = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                  for k, v in self.prefetch.replay_state(self.buffer).items()}
        return {"policy": self.agent.policy.state_dict(), "critic": self.agent.critic.state_dict(),
                "critic_target": self.agent.critic_target.state_dict(), "log_alpha": self.agent.log_alpha.detach().cpu(),
                "training": self.agent.training_state(), "replay": replay}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`: the next update is the one the saved run would have made."""
        self.agent.policy.load_state_dict(state["policy"])
        self.agent.critic.load_state_dict(state["critic"])
        self.agent.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.agent.log_alpha.copy_(state["log_alpha"])
        self.agent.load_training_state(state["training"])
        self.buffer.load_state_dict(state["replay"])
