"""Training callbacks in the Stable-Baselines3 style; the trainer's own evaluation and checkpoints are two of them.

A callback receives the events of a run, in this order: ``on_training_start()`` once; then at
every environment step (and the update that follows it) ``on_episode_end(return)`` when an
episode just ended, ``on_step()`` -- return False to stop training after this step (the run is
still saved) -- and, once the step's metrics row is written, ``on_step_end()``; whenever the
trainer evaluates, ``on_evaluation(result)`` with the :class:`~resel_train.evaluator.EvalResult`
(return False to stop after this step); ``on_training_end()`` once, after the final save (not
when training raised).

Inside a callback, ``self.trainer`` is the :class:`~resel_train.trainer.Trainer` (``env_steps``,
``cfg``, ``evaluate()``, ``save()``, ``policy``, ...), ``self.model`` the :class:`resel.RESeL`
when training runs through it (else None) and ``self.num_timesteps`` the run's environment steps
so far (its own counter, ``RESeL.run_timesteps``, which ``learn(reset_num_timesteps=True)`` does
not restart).

Without a ``callbacks`` argument the trainer runs :func:`default_callbacks`: an
:class:`EvalCallback` and a :class:`CheckpointCallback` configured from ``cfg.eval_every``,
``cfg.eval_episodes`` and ``cfg.checkpoint_every``. :func:`with_defaults` adds user callbacks to
them; a user callback of one of their classes replaces that default.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from resel_train.config import TrainConfig
    from resel_train.evaluator import EvalResult


class TrainingRun(Protocol):
    """What the callbacks here use of the trainer that calls them."""

    cfg: TrainConfig

    @property
    def env_steps(self) -> int:
        """Environment steps of the run so far."""

    def evaluate(self, episodes: int | None = None) -> EvalResult:
        """Run the deterministic policy on the held-out episodes."""

    def save(self) -> Path:
        """Write the checkpoint unit now; returns the checkpoint's path."""


class BaseCallback:
    """Override any of the ``on_*`` methods; the base versions do nothing and continue training."""

    def __init__(self) -> None:
        self.trainer: Any = None  # the TrainingRun calling this callback
        self.model: Any = None

    def init_callback(self, trainer: TrainingRun, model: Any = None) -> None:
        """Called by the trainer before ``on_training_start`` (again on every ``learn``)."""
        self.trainer = trainer
        if model is not None:
            self.model = model

    @property
    def num_timesteps(self) -> int:
        """The run's environment steps so far (0 before training starts)."""
        return self.trainer.env_steps if self.trainer is not None else 0

    def on_training_start(self) -> None:
        """Training starts (each ``learn`` call)."""

    def on_episode_end(self, episode_return: float) -> None:
        """A training episode ended with this undiscounted return (called before that step's ``on_step``)."""

    def on_step(self) -> bool:
        """After every environment step and its update; False stops training after this step."""
        return True

    def on_evaluation(self, result: EvalResult) -> bool:
        """The trainer evaluated the policy; False stops training after this step."""
        return True

    def on_step_end(self) -> None:
        """The step is complete, its metrics row written: a checkpoint saved here never runs ahead of metrics.csv."""

    def on_training_end(self) -> None:
        """Training ended and the run was saved."""


class CallbackList(BaseCallback):
    """Several callbacks called in order; training stops after a step where any of them returned False."""

    def __init__(self, callbacks: Iterable[BaseCallback]) -> None:
        super().__init__()
        self.callbacks = check_callbacks(callbacks)

    def init_callback(self, trainer: TrainingRun, model: Any = None) -> None:
        """Initialise every callback of the list."""
        super().init_callback(trainer, model)
        for c in self.callbacks:
            c.init_callback(trainer, model)

    def on_training_start(self) -> None:
        """Forward to every callback."""
        for c in self.callbacks:
            c.on_training_start()

    def on_episode_end(self, episode_return: float) -> None:
        """Forward to every callback."""
        for c in self.callbacks:
            c.on_episode_end(episode_return)

    def on_step(self) -> bool:
        """Forward to every callback (each sees every step); False if any returned False."""
        results = [c.on_step() is not False for c in self.callbacks]
        return all(results)

    def on_evaluation(self, result: EvalResult) -> bool:
        """Forward to every callback; False if any returned False."""
        results = [c.on_evaluation(result) is not False for c in self.callbacks]
        return all(results)

    def on_step_end(self) -> None:
        """Forward to every callback."""
        for c in self.callbacks:
            c.on_step_end()

    def on_training_end(self) -> None:
        """Forward to every callback."""
        for c in self.callbacks:
            c.on_training_end()


class EvalCallback(BaseCallback):
    """Evaluate the deterministic policy every ``eval_every`` steps and at the last step (``Trainer.evaluate``).

    Every callback receives the result in ``on_evaluation``; it lands in that step's row of
    metrics.csv and TensorBoard and in ``trainer.last_evaluation``. ``episodes`` None: ``cfg.eval_episodes``.
    """

    def __init__(self, eval_every: int, episodes: int | None = None) -> None:
        super().__init__()
        self.eval_every = _positive_int("eval_every", eval_every)
        self.episodes = None if episodes is None else _positive_int("episodes", episodes)

    def on_step(self) -> bool:
        """Evaluate when this step is due."""
        t = self.trainer
        if t.env_steps % self.eval_every == 0 or t.env_steps == t.cfg.steps:
            t.evaluate(self.episodes)
        return True


class CheckpointCallback(BaseCallback):
    """Replace the run folder's checkpoint + replay unit every ``every`` steps (see checkpoint.py).

    It saves in ``on_step_end``, after the step's log row, so a resumed run never lacks a logged
    step. The final save at the end of training is the trainer's own.
    """

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = _positive_int("every", every)

    def on_step_end(self) -> None:
        """Save when this step is due."""
        if self.trainer.env_steps % self.every == 0:
            self.trainer.save()


class StopTrainingOnRewardThreshold(BaseCallback):
    """Stop once an evaluation's mean return reaches ``threshold`` (after the step of that evaluation)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number; got {threshold!r}")
        self.threshold = float(threshold)

    def on_evaluation(self, result: EvalResult) -> bool:
        """Continue while the mean return is below the threshold."""
        return result.mean_return < self.threshold


def default_callbacks(cfg: TrainConfig) -> list[BaseCallback]:
    """What the trainer does without a ``callbacks`` argument: evaluation, then periodic checkpoints."""
    return [EvalCallback(cfg.eval_every, cfg.eval_episodes), CheckpointCallback(cfg.checkpoint_every)]


def with_defaults(cfg: TrainConfig, callbacks: BaseCallback | Iterable[BaseCallback] | None) -> list[BaseCallback]:
    """The defaults followed by ``callbacks``; a default whose class the user also passes is left out (replaced)."""
    user = [] if callbacks is None else check_callbacks([callbacks] if isinstance(callbacks, BaseCallback)
                                                        else callbacks)
    kept = [d for d in default_callbacks(cfg) if not any(isinstance(c, type(d)) for c in user)]
    return kept + user


def check_callbacks(callbacks: Iterable[BaseCallback]) -> list[BaseCallback]:
    """``callbacks`` as a list, refused with a TypeError naming what is not a BaseCallback."""
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a BaseCallback or a list of them; got {type(callbacks).__name__}")
    items = list(callbacks)
    for c in items:
        if not isinstance(c, BaseCallback):
            raise TypeError(f"callbacks must be BaseCallback instances (resel.BaseCallback); got {c!r}")
    return items


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return value
