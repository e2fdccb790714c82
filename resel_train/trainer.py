"""The training loop: collect -> store whole trajectories -> update -> evaluate -> checkpoint.

A run lives in one folder: ``checkpoint.pt`` (networks, optimisers, alpha, counters, RNG states,
resolved config) and the ``replay-<step>.pt`` it names (the replay buffer, so a resumed run
continues exactly) -- one unit, replaced atomically (see checkpoint.py) -- plus ``config.yaml``,
``metrics.csv``, TensorBoard events under ``tb/`` and ``run.lock`` (held by the process training
in it). A resumed run starts a fresh episode: the episode in progress at checkpoint time was never
stored (only whole trajectories enter the replay).

SIGINT and SIGTERM finish the current step, save and raise :class:`TrainingInterrupted`; a
non-finite loss, gradient norm or parameter raises :class:`~resel_train.guard.TrainingDiverged`
without saving over the last good checkpoint.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from resel_deploy.contract import ActionMapping
from resel_train.algo import RESeL
from resel_train.buffer import Batch, TrajectoryBuffer
from resel_train.callbacks import BaseCallback, CallbackList, default_callbacks
from resel_train.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    resume_config,
    run_dir_for,
    validate_config,
)
from resel_train.envs import make_env, task_info
from resel_train.graphed_update import GraphedUpdate
from resel_train.guard import DivergenceGuard, TrainingDiverged
from resel_train.logger import RunLogger
from resel_train.nets.policy import Policy, gumbel_noise
from resel_train.nets.registry import encoder_spec
from resel_train.persist.atomic import atomic_write
from resel_train.persist.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    load_replay,
    referenced_replay,
    remove_unreferenced,
    save_run_state,
)
from resel_train.persist.runlock import RunLock, RunLocked
from resel_train.stepwise import StepwisePolicy


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a save; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: Path, step: int) -> None:
        self.signum, self.checkpoint, self.step = signum, checkpoint, step
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name} at step {step}: saved {checkpoint}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for but torch sees no CUDA GPU; use --device cpu or auto")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 ...)")
    return torch.device(name)


def metrics_to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Device metrics to floats with one host synchronisation (at log time, not per update)."""
    if not metrics:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).cpu().tolist()
    return dict(zip(metrics, values))


class EpisodeRecorder:
    """The growing trajectory of the current episode (what enters the replay when it ends)."""

    def __init__(self, obs: np.ndarray, act_dim: int) -> None:
        self.obs = [obs]
        self.act: list[np.ndarray] = []
        self.rew: list[float] = []

    def add(self, act: np.ndarray, rew: float, next_obs: np.ndarray) -> None:
        self.act.append(act)
        self.rew.append(rew)
        self.obs.append(next_obs)

    @property
    def is_first(self) -> bool:
        return not self.act


class PolicyRunner:
    """Steps the policy one environment step at a time (batch 1) through :class:`StepwisePolicy`: the
    same model and step that are exported and deployed, wrapped around the live training weights."""

    def __init__(self, policy: Policy, device: torch.device) -> None:
        self.stepwise = StepwisePolicy(policy, live=True).to(device)
        self.device, self.discrete, self.act_dim = device, policy.discrete, policy.act_dim
        self.reset()

    def reset(self) -> None:
        self.state = self.stepwise.initial_state(1, self.device)

    @torch.no_grad()
    def act(self, episode: EpisodeRecorder, deterministic: bool, generator: torch.Generator | None) -> np.ndarray:
        """The next action as the replay stores it: in [-1, 1], or one-hot for a discrete policy.

        A stochastic action draws its noise on the CPU ``generator`` (reproducible on any device).
        """
        as_row = lambda x: torch.as_tensor(np.asarray(x, np.float32), device=self.device).reshape(1, -1)  # noqa: E731
        if deterministic:
            noise = torch.zeros(1, self.act_dim)
        elif self.discrete:
            noise = gumbel_noise((1, self.act_dim), generator)
        else:
            noise = torch.randn((1, self.act_dim), generator=generator)
        out = self.stepwise(as_row(episode.obs[-1]), as_row([episode.rew[-1] if episode.rew else 0.0]),
                            torch.tensor([float(episode.is_first)], device=self.device), noise.to(self.device),
                            *self.state)
        self.state = tuple(out[3:])
        return self.state[1][0].cpu().numpy()  # the state's prev_act: squashed action / one-hot

    def replace_action(self, action: np.ndarray) -> None:
        """The action actually taken was another one (warm-up): the next step must see it as prev_act."""
        taken = torch.as_tensor(np.asarray(action, np.float32), device=self.device).reshape(1, -1)
        self.state = (self.state[0], taken, *self.state[2:])


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
        self._rng_state, self._version = buffer.rng_state, buffer.version
        self._batch = buffer.sample(batch_size)

    def take(self, buffer: TrajectoryBuffer, batch_size: int) -> Batch:
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


class Trainer:
    """Owns the env, the agent, the replay and the run folder for one training run."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, resume: bool = False,
                 requested_keys: list[str] | None = None) -> None:
        """``requested_keys``: on resume, the config keys the caller set explicitly (the CLI's flags,
        ``--set`` and file keys); they must match the run's or be safe to change (see
        :func:`~resel_train.config.resume_config`). None compares every key of ``cfg``."""
        if not resume:
            validate_config(cfg)
        self.run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg)
        ckpt_path = self.run_dir / CHECKPOINT
        if resume and not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {self.run_dir}; start without --resume")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.run_dir).acquire()  # before reading anything: a second process stops here
        try:
            self._open(cfg, resume, requested_keys)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, cfg: TrainConfig, resume: bool, requested_keys: list[str] | None) -> None:
        ckpt_path = self.run_dir / CHECKPOINT
        if resume:
            saved = load_checkpoint(ckpt_path)
            remove_unreferenced(self.run_dir, keep=referenced_replay(saved))
            cfg = resume_config(config_from_dict(saved["config"]), cfg, requested_keys)
        elif ckpt_path.exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        else:
            remove_unreferenced(self.run_dir, keep=None)  # what a killed first save left
        self.cfg = cfg
        info = task_info(cfg.env)
        self.discrete = info.discrete
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.env = make_env(cfg.env, seed=cfg.seed)
        self.eval_env = make_env(cfg.env, seed=cfg.seed + 10_000, split="test")
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        # the deploy contract's mapping (the exported graph's): one-hot -> index, or [-1, 1] -> the finite bounds
        self.actions = ActionMapping.from_space(self.env.action_space)
        self.act_dim = int(self.env.action_space.n) if self.discrete else int(np.prod(self.env.action_space.shape))
        self.low, self.high = np.asarray(self.actions.low, np.float32), np.asarray(self.actions.high, np.float32)
        self.agent = RESeL(self.obs_dim, self.act_dim, info.reward_as_input, cfg.model, cfg.algo, cfg.seed, self.device,
                           discrete=self.discrete)
        self.graphed_update = GraphedUpdate(self.agent) if self.uses_cuda_graphs else None
        self.prefetch = Prefetch()
        self.buffer = TrajectoryBuffer(  # the padding the encoder needs between packed trajectories
            self.obs_dim, self.act_dim, cfg.replay_capacity, pad=encoder_spec(cfg.model.encoder).replay_pad(cfg.model),
            seed=cfg.seed
        )
        self.rng = np.random.default_rng(cfg.seed)
        self.collect_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.env_steps = 0
        self.episodes = 0
        self.recent_returns: deque[float] = deque(maxlen=10)
        self.last_eval: float | None = None
        self.last_eval_std: float | None = None
        self.last_eval_step: int | None = None  # env_steps of the last evaluate(): its log row carries the result
        self._checkpoint_requested = False
        self.guard = DivergenceGuard(
            {"policy": self.agent.policy, "critic": self.agent.critic, "critic_target": self.agent.critic_target},
            {"log_alpha": self.agent.log_alpha},
        )
        self.saved_step: int | None = None  # env_steps of the unit on disk
        self._unit_on_disk: tuple[int, int, int] | None = None  # the checkpoint.pt this trainer wrote or read
        self._saving_step: int | None = None  # env_steps of a save in progress
        self._wall_base, self._clock = 0.0, None  # wall time of earlier processes; perf_counter at train()
        self._stop_signal: int | None = None
        self.last_eval_success: float | None = None  # tasks whose env reports info["success"] (Key-to-Door)
        if resume:
            self._restore(saved)
        atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())

    # ---- model description for deployment -------------------------------------------------------
    def model_spec(self) -> dict:
        m = self.cfg.model
        return {
            "obs_dim": self.obs_dim, "act_dim": self.act_dim,
            "reward_as_input": self.agent.policy.reward_as_input, "encoder": m.encoder,
            "encoder_kwargs": m.encoder_kwargs(), "embed": m.embed, "hidden": m.hidden,
            "action_low": self.low.tolist(), "action_high": self.high.tolist(), "task_id": self.cfg.env,
            "discrete": self.discrete,
        }

    def to_env_action(self, action: np.ndarray) -> np.ndarray | int:
        """The policy's action in env units: rescaled from [-1, 1], or the index of a one-hot action."""
        return self.actions.to_env(action)

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self, show_progress: bool = True,
              callbacks: list[BaseCallback] | CallbackList | None = None) -> dict[str, float]:
        """Train to ``cfg.steps``; releases the run folder's lock when it returns or raises.

        ``callbacks`` run after every step (see resel_train/callbacks.py); None: the defaults,
        evaluation every ``cfg.eval_every`` and a checkpoint every ``cfg.checkpoint_every`` steps.
        A given list replaces them (:func:`~resel_train.callbacks.with_defaults` adds to them).
        """
        callback = CallbackList(default_callbacks(self.cfg) if callbacks is None else callbacks)
        try:
            self._check_unit_is_ours()
            with _StopOnSignals(self):
                return self._train(show_progress, callback)
        finally:
            self.lock.release()

    def request_checkpoint(self) -> None:
        """Save at the end of the current step, after its log row (a checkpoint never runs ahead of metrics.csv)."""
        self._checkpoint_requested = True

    def _train(self, show_progress: bool, callback: CallbackList) -> dict[str, float]:
        cfg = self.cfg
        logger = RunLogger(self.run_dir, start_step=self.env_steps, config=config_to_dict(cfg))
        runner = PolicyRunner(self.agent.policy, self.device)
        obs, _ = self.env.reset(seed=cfg.seed + self.episodes)
        episode = EpisodeRecorder(obs.astype(np.float32), self.act_dim)
        metrics: dict[str, torch.Tensor] = {}  # the latest value of each, read only when logged
        start_time, start_steps = time.perf_counter(), self.env_steps
        self._clock = start_time
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), disable=not show_progress, transient=False,
        )
        try:
            callback.init_callback(self)
            callback.on_training_start()
            with progress:
                bar = progress.add_task(f"{cfg.env} ({cfg.model.encoder})", total=cfg.steps,
                                        completed=self.env_steps, status="")
                keep_going = True
                while keep_going and self.env_steps < cfg.steps and self._stop_signal is None:
                    obs = self._env_step(episode, runner)
                    if obs is not None:  # episode ended
                        episode = EpisodeRecorder(obs, self.act_dim)
                        runner.reset()
                        callback.on_episode_end(self.recent_returns[-1])
                    if (self.env_steps > cfg.warmup_steps and self.buffer.num_trajectories
                            and self.env_steps % cfg.algo.update_every == 0):
                        metrics.update(self.update_once())
                        self.guard.observe(self.env_steps, metrics)
                    log_now = self.env_steps % cfg.log_every == 0
                    if log_now:
                        self.guard.check(self.env_steps)
                    keep_going = callback.on_step() is not False  # evaluation runs here (EvalCallback)
                    evaluated = self.last_eval_step == self.env_steps
                    if evaluated or log_now:
                        rate = (self.env_steps - start_steps) / (time.perf_counter() - start_time)
                        self._log(logger, metrics, rate, start_time, evaluated)
                        progress.update(bar, status=self._status(rate))
                    if self._checkpoint_requested:  # CheckpointCallback asks; saved after the log row
                        self._checkpoint_requested = False
                        self.save()
                    progress.update(bar, completed=self.env_steps)
        except TrainingDiverged:
            raise
        except Exception:
            self.guard.check(self.env_steps)  # a NaN that crashed the loop is reported as the divergence it is
            raise
        finally:
            logger.close()
        path = self.save()
        callback.on_training_end()
        if self._stop_signal is not None:
            raise TrainingInterrupted(self._stop_signal, path, self.env_steps)
        return {"env_steps": self.env_steps, "eval_return": self.last_eval,
                "eval_success_rate": self.last_eval_success, **metrics_to_floats(metrics)}

    def wall_time(self) -> float:
        """Seconds of training over all processes of this run (continues across resumes)."""
        return self._wall_base + (time.perf_counter() - self._clock if self._clock is not None else 0.0)

    def _env_step(self, episode: EpisodeRecorder, runner: PolicyRunner) -> np.ndarray | None:
        """One environment step; returns the first observation of a new episode when one ended."""
        action = runner.act(episode, deterministic=False, generator=self.collect_generator)
        if self.env_steps < self.cfg.warmup_steps:
            if self.discrete:
                action = np.eye(self.act_dim, dtype=np.float32)[self.rng.integers(self.act_dim)]
            else:
                action = self.rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)
            runner.replace_action(action)
        next_obs, reward, terminated, truncated, _ = self.env.step(self.to_env_action(action))
        episode.add(action.astype(np.float32), float(reward), np.asarray(next_obs, np.float32))
        self.env_steps += 1
        if not (terminated or truncated):
            return None
        self.buffer.add_trajectory(np.stack(episode.obs), np.stack(episode.act), np.asarray(episode.rew, np.float32),
                                   bool(terminated))
        self.recent_returns.append(float(np.sum(episode.rew)))
        self.episodes += 1
        obs, _ = self.env.reset(seed=self.cfg.seed + self.episodes)
        return np.asarray(obs, np.float32)

    @property
    def uses_cuda_graphs(self) -> bool:
        """Graphs on CUDA unless switched off or the encoder cannot be captured (its registry entry says; the
        GRU's and LSTM's cuDNN layout, one trajectory per row, needs a host sync per call, so they run eagerly)."""
        return (self.device.type == "cuda" and self.cfg.cuda_graphs
                and encoder_spec(self.cfg.model.encoder).cuda_graphs)

    def update_once(self) -> dict[str, torch.Tensor]:
        """Sample, draw the update's noise on the host, launch one update; metrics stay on the device.

        The update runs asynchronously on a GPU, so the next batch is sampled right after the launch,
        while the GPU works (see :class:`Prefetch`).
        """
        batch = self.prefetch.take(self.buffer, self.cfg.algo.batch_size)
        noise = self.agent.draw_noise(*batch.reset.shape)
        if self.graphed_update is not None:
            metrics = self.graphed_update(batch, noise)
        else:
            if self.device.type == "cuda":  # pinned host memory: the copies overlap with queued GPU work
                batch, noise = batch.pin_memory(), noise.pin_memory()
            metrics = self.agent.update(batch.to(self.device, non_blocking=True),
                                        noise.to(self.device, non_blocking=True))
        self.prefetch.draw(self.buffer, self.cfg.algo.batch_size)
        return metrics

    def evaluate(self, episodes: int | None = None) -> float:
        """Mean return of the deterministic policy from a zero state (held-out tasks where there are any).

        Records it as ``last_eval`` / ``last_eval_std`` / ``last_eval_step`` (the log row of that step
        carries it) and ``last_eval_success``: the fraction of episodes that ended with ``info["success"]``
        (None for tasks that do not report it). A diverged policy is not evaluated (:class:`TrainingDiverged`).
        """
        self.guard.check(self.env_steps)
        runner = PolicyRunner(self.agent.policy, self.device)
        returns, successes = [], []
        for i in range(episodes or self.cfg.eval_episodes):
            obs, _ = self.eval_env.reset(seed=self.cfg.seed + 10_000 + i)
            episode = EpisodeRecorder(np.asarray(obs, np.float32), self.act_dim)
            runner.reset()
            done = False
            while not done:
                action = runner.act(episode, deterministic=True, generator=None)
                obs, reward, terminated, truncated, info = self.eval_env.step(self.to_env_action(action))
                episode.add(action, float(reward), np.asarray(obs, np.float32))
                done = terminated or truncated
            returns.append(float(np.sum(episode.rew)))
            if "success" in info:
                successes.append(bool(info["success"]))
        self.last_eval, self.last_eval_std = float(np.mean(returns)), float(np.std(returns))
        self.last_eval_success = float(np.mean(successes)) if successes else None
        self.last_eval_step = self.env_steps
        return self.last_eval

    def _status(self, rate: float) -> str:
        train = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "-"
        evalr = f"{self.last_eval:.1f}" if self.last_eval is not None else "-"
        success = f"  success {self.last_eval_success:.0%}" if self.last_eval_success is not None else ""
        return f"{rate:.0f} steps/s  train {train}  eval {evalr}{success}"

    def _log(self, logger: RunLogger, metrics: dict[str, torch.Tensor], rate: float, start_time: float,
             evaluated: bool) -> None:
        logger.log({
            "step": self.env_steps, "wall_s": round(self.wall_time(), 2), "steps_per_s": rate,
            "episodes": self.episodes,
            "train_return": float(np.mean(self.recent_returns)) if self.recent_returns else None,
            "eval_return": self.last_eval if evaluated else None,
            "eval_return_std": self.last_eval_std if evaluated else None,
            "eval_success_rate": self.last_eval_success if evaluated else None,
            **metrics_to_floats(metrics),
        })

    # ---- checkpoints -----------------------------------------------------------------------------
    def _checkpoint_identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.run_dir / CHECKPOINT)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _check_unit_is_ours(self) -> None:
        """Refuse to train over a checkpoint that another process wrote while this trainer held no lock (between
        two ``learn`` calls): continuing from the state in memory would silently undo that process's work."""
        if self._checkpoint_identity() == self._unit_on_disk:
            return
        path = self.run_dir / CHECKPOINT
        now = f"at step {load_checkpoint(path)['counters']['env_steps']}" if path.exists() else "gone"
        raise RunLocked(f"{self.run_dir} was changed by another model or process since this one last saved it (its "
                        f"checkpoint is {now}, this model is at step {self.env_steps}); load the run again "
                        "(RESeL.load or --resume) instead of training over it")

    def kept(self) -> str:
        """What the run folder holds if the process stops now (for the messages of a failed save or a second signal)."""
        path = self.run_dir / CHECKPOINT
        last = ("nothing was saved" if self.saved_step is None
                else f"the last good checkpoint {path} (step {self.saved_step}) is kept")
        if self._saving_step is None:
            return last
        return f"{last}, or step {self._saving_step} if the save in progress had committed (a save is all or nothing)"

    def save(self) -> Path:
        """Replace the run's checkpoint + replay unit atomically (see checkpoint.py); refuses a diverged state.

        A step already on disk is not written again (nothing changes between saves at one step).
        """
        self.guard.check(self.env_steps)
        self._check_unit_is_ours()
        if self.saved_step == self.env_steps:
            return self.run_dir / CHECKPOINT
        replay = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                  for k, v in self.prefetch.replay_state(self.buffer).items()}
        self._saving_step = self.env_steps
        try:
            path = self._write_unit(replay)
            self.saved_step, self._unit_on_disk = self.env_steps, self._checkpoint_identity()
        finally:
            self._saving_step = None
        return path

    def _write_unit(self, replay: dict) -> Path:
        return save_run_state(self.run_dir, {
            "model": self.model_spec(),
            "config": config_to_dict(self.cfg),
            "policy": self.agent.policy.state_dict(),
            "critic": self.agent.critic.state_dict(),
            "critic_target": self.agent.critic_target.state_dict(),
            "log_alpha": self.agent.log_alpha.detach().cpu(),
            "training": self.agent.training_state(),
            "counters": {"env_steps": self.env_steps, "episodes": self.episodes, "wall_s": self.wall_time()},
            "rng": {
                "torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state,
                "python": random.getstate(), "collect": self.collect_generator.get_state(),
            },
        }, {"replay": replay}, self.env_steps)

    def _restore(self, saved: dict) -> None:
        replay = load_replay(self.run_dir, saved)
        self.agent.policy.load_state_dict(saved["policy"])
        self.agent.critic.load_state_dict(saved["critic"])
        self.agent.critic_target.load_state_dict(saved["critic_target"])
        with torch.no_grad():
            self.agent.log_alpha.copy_(saved["log_alpha"])
        self.agent.load_training_state(saved["training"])
        self.buffer.load_state_dict(replay["replay"])
        self.env_steps = int(saved["counters"]["env_steps"])
        self.episodes = int(saved["counters"]["episodes"])
        self._wall_base = float(saved["counters"].get("wall_s", 0.0))
        self.saved_step, self._unit_on_disk = self.env_steps, self._checkpoint_identity()
        torch.set_rng_state(saved["rng"]["torch"])
        self.rng.bit_generator.state = saved["rng"]["numpy"]
        random.setstate(saved["rng"]["python"])
        self.collect_generator.set_state(saved["rng"]["collect"])


class _StopOnSignals:
    """While training: the first SIGINT/SIGTERM asks the loop to stop after its current step and save;
    a second one stops the process at once (saves are atomic, so that loses at most that last save), after
    printing what the run folder keeps. Only installed from the main thread (Python delivers signals there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.trainer._stop_signal is not None:
            name = signal.Signals(signum).name
            os.write(2, f"second {name}: stopping at once; {self.trainer.kept()}; continue it with --resume\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.trainer._stop_signal = signum

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
