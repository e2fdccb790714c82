"""The run folder: its lock, its checkpoint + replay unit, its config.yaml and its metrics log.

A run lives in one folder: ``checkpoint.pt`` and the ``replay-<step>.pt`` it names -- one unit,
replaced atomically (see persist/checkpoint.py; its sections in persist/layout.py) -- plus
``config.yaml``, ``metrics.csv``, TensorBoard events under ``tb/`` and ``run.lock``, held by the
process training in the folder (:class:`~resel_train.persist.runlock.RunLock`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from resel_deploy.contract import ActionMapping
from resel_train.config import TrainConfig
from resel_train.envs import task_info
from resel_train.logger import RunLogger
from resel_train.persist import layout
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


def model_spec(cfg: TrainConfig, obs_dim: int, act_dim: int, actions: ActionMapping) -> dict[str, Any]:
    """The checkpoint's ``model`` section: everything deployment needs to rebuild the policy and map its actions."""
    m, info = cfg.model, task_info(cfg.env)
    return {"obs_dim": obs_dim, "act_dim": act_dim, "reward_as_input": info.reward_as_input, "encoder": m.encoder,
            "encoder_kwargs": m.encoder_kwargs(), "embed": m.embed, "hidden": m.hidden,
            "action_low": np.asarray(actions.low, np.float32).tolist(),
            "action_high": np.asarray(actions.high, np.float32).tolist(), "task_id": cfg.env, "discrete": actions.discrete}


class RunStore:
    """Reads and writes one run folder, under its lock; remembers which unit on disk is its own.

    The lock is taken by :meth:`open` and held until :meth:`release`; :meth:`hold` takes it again.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.checkpoint = run_dir / CHECKPOINT
        self._lock = RunLock(run_dir)
        self.saved_step: int | None = None  # env_steps of the unit on disk
        self._unit_on_disk: tuple[int, int, int] | None = None  # the checkpoint.pt this store wrote or read
        self._saving_step: int | None = None  # env_steps of a save in progress

    # ---- the lock ----------------------------------------------------------------------------
    def hold(self) -> None:
        """Take the folder's lock unless held already; raises RunLocked while another process holds it."""
        if not self._lock.held:
            self._lock.acquire()

    def release(self) -> None:
        """Let another process (or model) take the folder."""
        self._lock.release()

    @contextmanager
    def training(self, step: int) -> Iterator[None]:
        """Hold the folder while a ``train`` call at env step ``step`` runs; refused if another process holds it
        or changed the unit since this store last read or wrote it."""
        self.hold()
        try:
            self.check_unit_is_ours(step)
            yield
        finally:
            self.release()

    @property
    def previous_holder(self) -> str | None:
        """Who held the lock before, when it was the stale lock of a process that is gone (else None)."""
        return self._lock.previous_holder

    # ---- opening -------------------------------------------------------------------------------
    def open(self, resume: bool) -> dict[str, Any] | None:
        """Take the folder and return its loaded checkpoint (resume) or None (a new run); cleans up what a
        killed process left (temp files, replay files no checkpoint names). Releases the lock if it raises."""
        if resume and not self.checkpoint.exists():
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {self.run_dir}; start without --resume")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.hold()  # before reading anything: a second process stops here
        try:
            if not resume:
                if self.checkpoint.exists():
                    raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it or "
                                          "choose another --out")
                remove_unreferenced(self.run_dir, keep=None)  # what a killed first save left
                return None
            saved = load_checkpoint(self.checkpoint)
            remove_unreferenced(self.run_dir, keep=referenced_replay(saved))
            return saved
        except BaseException:
            self.release()
            raise

    def components(self, saved: dict[str, Any]) -> dict[str, dict]:
        """``{component: state_dict}`` of the unit :meth:`open` loaded (its replay file read and checked here)."""
        state = layout.components(saved, load_replay(self.run_dir, saved))
        self.saved_step, self._unit_on_disk = int(saved["counters"]["env_steps"]), self._identity()
        return state

    def write_config(self, config: dict[str, Any]) -> None:
        """``config.yaml``: the resolved config, for a person (the checkpoint holds its own copy)."""
        atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

    def open_log(self, start_step: int, config: dict[str, Any]) -> RunLogger:
        """The metrics log, cut back to ``start_step`` (rows a killed process logged after its last save go)."""
        return RunLogger(self.run_dir, start_step=start_step, config=config)

    # ---- the checkpoint unit ----------------------------------------------------------------------
    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.checkpoint)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def check_unit_is_ours(self, step: int) -> None:
        """Refuse to train over a checkpoint that another process wrote while this one held no lock (between
        two ``learn`` calls): continuing from the state in memory would silently undo that process's work."""
        if self._identity() == self._unit_on_disk:
            return
        now = (f"at step {load_checkpoint(self.checkpoint)['counters']['env_steps']}" if self.checkpoint.exists()
               else "gone")
        raise RunLocked(f"{self.run_dir} was changed by another model or process since this one last saved it (its "
                        f"checkpoint is {now}, this model is at step {step}); load the run again "
                        "(RESeL.load or --resume) instead of training over it")

    def save(self, step: int, unit: Callable[[], tuple[dict, dict, dict[str, dict]]]) -> Path:
        """Replace the unit with ``unit()`` = (model spec, config, ``{component: state_dict}``) of env step ``step``.

        A step already on disk is not written again (nothing changes between saves at one step), and
        ``unit`` is then not called.
        """
        self.check_unit_is_ours(step)
        if self.saved_step == step:
            return self.checkpoint
        model, config, state = unit()
        checkpoint, replay = layout.pack(model, config, state)
        self._saving_step = step
        try:
            path = save_run_state(self.run_dir, checkpoint, replay, step)
            self.saved_step, self._unit_on_disk = step, self._identity()
        finally:
            self._saving_step = None
        return path

    def kept(self) -> str:
        """What the run folder holds if the process stops now (for the messages of a failed save or a second signal)."""
        last = ("nothing was saved" if self.saved_step is None
                else f"the last good checkpoint {self.checkpoint} (step {self.saved_step}) is kept")
        if self._saving_step is None:
            return last
        return f"{last}, or step {self._saving_step} if the save in progress had committed (a save is all or nothing)"
