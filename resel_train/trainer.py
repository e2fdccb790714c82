"""The training loop over its components: collect -> store whole episodes -> update -> evaluate -> log -> save.

Collector (train env, stepwise policy, collection RNGs), Learner (agent, replay, update, divergence guard),
Evaluator and RunStore (run folder: lock, checkpoint unit, metrics log) each own their state; a checkpoint is
``{component: state_dict}``. SIGINT/SIGTERM finish the step, save and raise :class:`TrainingInterrupted`; a
non-finite loss, gradient or parameter raises ``TrainingDiverged`` without saving over the last checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from resel_train.callbacks import BaseCallback, CallbackList, default_callbacks
from resel_train.collector import Collector
from resel_train.config import TrainConfig, config_from_dict, config_to_dict, resume_config, run_dir_for, validate_config
from resel_train.devices import configure_torch
from resel_train.evaluator import EvalResult, Evaluator
from resel_train.guard import TrainingDiverged
from resel_train.learner import Learner
from resel_train.monitor import Monitor, RunClock
from resel_train.run_store import RunStore, model_spec
from resel_train.signals import StopOnSignals, TrainingInterrupted


class Trainer:
    """One training run. It holds the run folder's lock from construction until :meth:`train` returns (each
    ``train`` takes it again) or :meth:`close`; ``with Trainer(...) as t:`` closes at the end of the block."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, resume: bool = False,
                 requested_keys: list[str] | None = None) -> None:
        """``requested_keys``: on resume, the config keys the caller set (compared with the run's, see
        :func:`~resel_train.config.resume_config`); None: every key of ``cfg``."""
        if not resume:
            validate_config(cfg)
        self.store = RunStore(Path(run_dir) if run_dir is not None else run_dir_for(cfg))
        self.run_dir = self.store.run_dir
        saved = self.store.open(resume)
        try:
            self.cfg = resume_config(config_from_dict(saved["config"]), cfg, requested_keys) if saved else cfg
            self.device = configure_torch(self.cfg)
            c = self.collector = Collector(self.cfg)
            self.evaluator = Evaluator(self.cfg, c.actions)
            self.learner = Learner(self.cfg, c.obs_dim, c.act_dim, self.device)
            self.policy = self.learner.policy  # the live policy network
            self.model_spec = model_spec(self.cfg, c.obs_dim, c.act_dim, c.actions)  # the checkpoint's, for deployment
            self.last_evaluation: EvalResult | None = None
            self.clock, self._callbacks, self._stop = RunClock(), CallbackList([]), False
            if saved:
                self.load_state_dict(self.store.components(saved))
            self.store.write_config(config_to_dict(self.cfg))
        except BaseException:
            self.store.release()
            raise

    @property
    def env_steps(self) -> int:
        """Environment steps of the run so far (over every process and resume)."""
        return self.collector.env_steps

    def train(self, until_step: int | None = None, show_progress: bool = True,
              callbacks: list[BaseCallback] | CallbackList | None = None) -> dict[str, float]:
        """Train, holding the run folder's lock, to ``until_step`` env steps (None: ``cfg.steps``; given, it becomes
        ``cfg.steps``, where a resume stops), then save. ``callbacks`` (None: the defaults) receive the run's events."""
        if until_step is not None:
            self.cfg.steps = until_step
        self._callbacks = CallbackList(default_callbacks(self.cfg) if callbacks is None else callbacks)
        try:
            with self.store.training(self.env_steps), StopOnSignals(self.store.kept) as signals:
                return self._loop(show_progress, signals)
        finally:
            self._callbacks = CallbackList([])

    def _loop(self, show_progress: bool, signals: StopOnSignals) -> dict[str, float]:
        cfg, callbacks, collector, learner = self.cfg, self._callbacks, self.collector, self.learner
        collector.begin(self.policy, self.device)
        self.clock.start(self.env_steps)
        self._stop = False
        try:
            with Monitor(self.store.open_log(self.env_steps, config_to_dict(cfg)), self.clock,
                         f"{cfg.env} ({cfg.model.encoder})", cfg.steps, self.env_steps, show_progress) as monitor:
                callbacks.init_callback(self)
                callbacks.on_training_start()
                while not self._stop and self.env_steps < cfg.steps and signals.received is None:
                    episode = collector.step()
                    if episode is not None:
                        learner.add(episode)
                        callbacks.on_episode_end(episode.total_return)
                    learner.after_env_step(self.env_steps)
                    if log_now := self.env_steps % cfg.log_every == 0:
                        learner.check(self.env_steps)
                    self._stop = callbacks.on_step() is False or self._stop  # evaluation runs here (EvalCallback)
                    last = self.last_evaluation
                    if log_now or (last is not None and last.step == self.env_steps):
                        monitor.log(self.env_steps, collector.episodes, collector.recent_returns, last,
                                    learner.metric_floats())
                    callbacks.on_step_end()  # checkpoints are saved here (CheckpointCallback), after the row
                    monitor.advance_to(self.env_steps)
        except Exception as exc:
            if not isinstance(exc, TrainingDiverged):
                learner.check(self.env_steps)  # a NaN that crashed the loop is reported as the divergence it is
            raise
        path = self.save()
        self.clock.stop()
        callbacks.on_training_end()
        if signals.received is not None:
            raise TrainingInterrupted(signals.received, path, self.env_steps)
        last = self.last_evaluation
        return {"env_steps": self.env_steps, "eval_return": None if last is None else last.mean_return,
                "eval_success_rate": None if last is None else last.success_rate, **learner.metric_floats()}

    def evaluate(self, episodes: int | None = None) -> EvalResult:
        """Evaluate the deterministic policy (see :class:`~resel_train.evaluator.Evaluator`); kept as
        ``last_evaluation`` (the step's log row carries it) and sent to the callbacks' ``on_evaluation``.
        A diverged policy is not evaluated (:class:`~resel_train.guard.TrainingDiverged`)."""
        self.learner.check(self.env_steps)
        self.last_evaluation = self.evaluator.run(self.policy, self.device, self.env_steps, episodes)
        self._stop = self._callbacks.on_evaluation(self.last_evaluation) is False or self._stop
        return self.last_evaluation

    def save(self) -> Path:
        """Replace the run's checkpoint + replay unit atomically (see run_store.py); refuses a diverged state."""
        self.learner.check(self.env_steps)
        return self.store.save(self.env_steps, lambda: (self.model_spec, config_to_dict(self.cfg), self.state_dict()))

    def state_dict(self) -> dict[str, dict]:
        """``{component: state_dict}``: the learner, the collector and the loop's own (wall time, global RNGs)."""
        own = {"wall_s": self.clock.seconds, "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
        return {"learner": self.learner.state_dict(), "collector": self.collector.state_dict(), "trainer": own}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        """Continue from :meth:`state_dict` exactly (the same next env step and update as the saved run)."""
        self.learner.load_state_dict(state["learner"])
        self.collector.load_state_dict(state["collector"])
        self.clock.earlier = float(state["trainer"]["wall_s"])
        torch.set_rng_state(state["trainer"]["rng"]["torch"])
        random.setstate(state["trainer"]["rng"]["python"])

    def close(self) -> None:
        """Release the run folder (another process or model may then train in it)."""
        self.store.release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
