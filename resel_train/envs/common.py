"""Small pieces shared by the task families: index selection, default seeding, task pools.

Kept free of simulator imports so that ``import resel_train.envs`` stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from resel_deploy.extras import install_hint

SIM_INSTALL_HINT = install_hint("sim")
SPLITS = ("train", "test")


def require(module: str, task_id: str, install: str = SIM_INSTALL_HINT) -> None:
    """Fail early with an actionable message when an optional simulator package is missing."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"Task '{task_id}' needs the optional package '{module}', which is not installed. "
            f"Install it with: {install}"
        )


@contextlib.contextmanager
def silenced_c_output(fds: tuple[int, ...] = (1,)) -> Iterator[None]:
    """Send file descriptors (1: stdout, 2: stderr) to /dev/null for a moment: PyBullet's C code prints
    ``pybullet build time ...`` (stderr) on import and ``argv[0]=`` (stdout) on every connection,
    past ``sys.stdout``. Python exceptions still propagate; they are printed after the restore."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    try:
        with open(os.devnull, "wb") as devnull:
            for fd in fds:
                os.dup2(devnull.fileno(), fd)
        yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)


class QuietReset(gym.Wrapper):
    """Runs ``reset`` with C-level stdout silenced (PyBullet connects its client on the first reset)."""

    def reset(self, **kwargs: Any):
        """The wrapped env's reset with its C-level output silenced."""
        with silenced_c_output():
            return self.env.reset(**kwargs)


class Float32Observation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Cast a flat Box observation (MuJoCo gives float64) to float32, the dtype the networks use.

    Unlike ``gymnasium.wrappers.DtypeObservation`` it casts the bounds itself, so building an env
    does not warn about lowered precision of infinite bounds.
    """

    def __init__(self, env: gym.Env, indices: Sequence[int] | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, indices=indices)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        assert isinstance(space, spaces.Box) and len(space.shape) == 1, space
        self.indices = np.arange(space.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0 or self.indices.max() >= space.shape[0]:
            raise ValueError(
                f"bad indices {self.indices.tolist()} for an observation of size {space.shape[0]}"
            )
        self.observation_space = spaces.Box(
            low=space.low[self.indices].astype(np.float32),
            high=space.high[self.indices].astype(np.float32),
            dtype=np.float32,
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The kept entries, as float32."""
        return np.asarray(observation, dtype=np.float32)[self.indices]


class SelectObservation(Float32Observation):
    """Keep only some entries of a flat Box observation (the -P / -V POMDP variants).

    The new space slices the bounds of the old one, so nothing about the kept entries changes.
    """

    def __init__(self, env: gym.Env, indices: Sequence[int]):
        super().__init__(env, indices)


class DefaultSeed(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Use the ``seed`` given to ``make_env`` for the first ``reset()`` that passes none.

    Seeding lazily (instead of calling ``reset`` inside ``make_env``) keeps task sequences such as
    the test-split cycle starting at their first task. Public attributes of the wrapped task
    wrappers (``gravity_scale``, ``task``, ...) stay reachable through this outermost wrapper.
    """

    def __init__(self, env: gym.Env, seed: int | None):
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed)
        gym.Wrapper.__init__(self, env)
        self._default_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset; the first call without a seed uses the default seed (later ones continue the stream)."""
        if seed is None and self._default_seed is not None:
            seed, self._default_seed = self._default_seed, None
        return self.env.reset(seed=seed, options=options)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "env":  # "env" missing means a half-built object (unpickling)
            raise AttributeError(name)
        return self.env.get_wrapper_attr(name)


class TaskPool:
    """A fixed pool of hidden task parameters, split into train (first) and test (last) tasks.

    The pool is drawn once from ``pool_seed``, independent of the environment seed, so every run
    and every worker sees the same tasks. ``split="train"`` samples a training task uniformly with
    the pool's own generator (re-seeded by ``reset(seed=...)``); ``split="test"`` walks through the
    test tasks in order, and ``reset(seed=s)`` moves the walk to test task ``s % len(test)``: the
    same seed always gives the same task (Gymnasium's determinism contract), an evaluation that
    seeds its episodes ``base, base + 1, ...`` sees the same tasks in the same order every time and
    covers each test task once per ``len(test)`` episodes, and unseeded resets continue the walk.
    """

    def __init__(self, tasks: Sequence[Any], n_train: int, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.train = list(tasks[:n_train])
        self.test = list(tasks[n_train:])
        self.split = split
        self._rng = np.random.default_rng()
        self._next_test = 0

    def seed(self, seed: int | None) -> None:
        """Re-seed the training-task generator and place the test walk (called on ``reset(seed=...)``)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._next_test = seed % len(self.test) if self.test else 0

    def draw(self) -> Any:
        """The task for the next episode."""
        if self.split == "train":
            return self.train[int(self._rng.integers(len(self.train)))]
        task = self.test[self._next_test % len(self.test)]
        self._next_test += 1
        return task
