"""Training callbacks in the Stable-Baselines3 style; the trainer's own evaluation and checkpoints are two of them.

The trainer calls, in this order: ``on_training_start()`` once; after every environment step (and
the update that follows it) ``on_episode_end(return)`` when an episode just ended, then
``on_step()`` -- return False to stop training after this step (the run is still saved);
``on_training_end()`` once, after the final save (not when training raised).

Inside a callback, ``self.trainer`` is the :class:`~resel_train.trainer.Trainer` (``env_steps``,
``last_eval``, ``agent``, ``cfg``, ...), ``self.model`` the :class:`resel.RESeL` when training runs
through it (else None) and ``self.num_timesteps`` the run's environment steps so far (its own counter,
``RESeL.run_timesteps``, which ``learn(reset_num_timesteps=True)`` does not restart).

Without a ``callbacks`` argument the trainer runs :func:`default_callbacks`: an
:class:`EvalCallback` and a :class:`CheckpointCallback` configured from ``cfg.eval_every``,
``cfg.eval_episodes`` and ``cfg.checkpoint_every``. :func:`with_defaults` adds user callbacks to
them; a user callback of one of their classes replaces that default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resel_train.config import TrainConfig
    from resel_train.trainer import Trainer


class BaseCallback:
    """Override any of the ``on_*`` methods; the base versions do nothing and continue training."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.model: Any = None

    def init_callback(self, trainer: Trainer, model: Any = None) -> None:
        """Called by the trainer before ``on_training_start`` (again on every ``learn``)."""
        self.trainer = trainer
        if model is not None:
            self.model = model

    @property
    def num_timesteps(self) -> int:
        return self.trainer.env_steps if self.trainer is not None else 0

    def on_training_start(self) -> None:
        pass

    def on_episode_end(self, episode_return: float) -> None:
        pass

    def on_step(self) -> bool:
        return True

    def on_training_end(self) -> None:
        pass


class CallbackList(BaseCallback):
    """Several callbacks called in order; training stops after a step where any ``on_step`` returned False."""

    def __init__(self, callbacks: Iterable[BaseCallback]) -> None:
        super().__init__()
        self.callbacks = check_callbacks(callbacks)

    def init_callback(self, trainer: Trainer, model: Any = None) -> None:
        super().init_callback(trainer, model)
        for c in self.callbacks:
            c.init_callback(trainer, model)

    def on_training_start(self) -> None:
        for c in self.callbacks:
            c.on_training_start()

    def on_episode_end(self, episode_return: float) -> None:
        for c in self.callbacks:
            c.on_episode_end(episode_return)

    def on_step(self) -> bool:
        results = [c.on_step() is not False for c in self.callbacks]  # every callback sees every step
        return all(results)

    def on_training_end(self) -> None:
        for c in self.callbacks:
            c.on_training_end()


class EvalCallback(BaseCallback):
    """Evaluate the deterministic policy every ``eval_every`` steps and at the last step (``Trainer.evaluate``).

    The result lands in ``trainer.last_eval`` / ``last_eval_std`` and in that step's row of
    metrics.csv and TensorBoard. ``episodes`` None: ``cfg.eval_episodes``.
    """

    def __init__(self, eval_every: int, episodes: int | None = None) -> None:
        super().__init__()
        self.eval_every = _positive_int("eval_every", eval_every)
        self.episodes = None if episodes is None else _positive_int("episodes", episodes)

    def on_step(self) -> bool:
        t = self.trainer
        if t.env_steps % self.eval_every == 0 or t.env_steps == t.cfg.steps:
            t.evaluate(self.episodes)
        return True


class CheckpointCallback(BaseCallback):
    """Replace the run folder's checkpoint + replay unit every ``every`` steps (see checkpoint.py).

    The save happens at the end of the step, after its log row (``Trainer.request_checkpoint``), so
    a resumed run never lacks a logged step. The final save at the end of training is the trainer's own.
    """

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = _positive_int("every", every)

    def on_step(self) -> bool:
        if self.trainer.env_steps % self.every == 0:
            self.trainer.request_checkpoint()
        return True


class StopTrainingOnRewardThreshold(BaseCallback):
    """Stop once an evaluation's mean return reaches ``threshold`` (place it after an EvalCallback)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number; got {threshold!r}")
        self.threshold = float(threshold)

    def on_step(self) -> bool:
        t = self.trainer
        return not (t.last_eval_step == t.env_steps and t.last_eval >= self.threshold)


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
