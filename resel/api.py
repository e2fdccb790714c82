"""``RESeL``: train, save, load, predict and export in the Stable-Baselines3 style, through the one Trainer.

    model = RESeL("Pendulum-P", preset="cpu")          # creates the run folder runs/Pendulum-P_mamba_s0/
    model.learn(8000)                                   # 8000 env steps; learn(8000) again trains 8000 more
    model.save("p.pt")                                  # a checkpoint every `resel` command accepts
    model = RESeL.load("p.pt")
    state, start = None, True
    obs, _ = env.reset()
    while True:
        action, state = model.predict(obs, state, episode_start=start, deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(action)
        start = terminated or truncated                 # (reward_as_input tasks: pass reward= too)

``predict`` runs :class:`~resel_train.stepwise.StepwisePolicy` (the step the trainer collects with), so its actions
are exactly those of ``Controller.load(checkpoint, backend="torch")``; ``export`` writes the ONNX
file or TensorRT engine that the controller runs on a robot.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resel_deploy.contract import ENGINE_SUFFIXES
from resel_deploy.controller import NonFiniteAction, checked_safe_action
from resel_train.callbacks import BaseCallback, with_defaults
from resel_train.config import (
    TrainConfig,
    config_from_dict,
    flat_keys,
    load_config_file,
    parse_overrides,
    resolve_config,
)
from resel_train.devices import resolve_device
from resel_train.persist.atomic import atomic_write
from resel_train.persist.checkpoint import CHECKPOINT, load_checkpoint, referenced_replay
from resel_train.persist.runlock import RunLocked
from resel_train.stepwise import StepwisePolicy
from resel_train.trainer import Trainer

FORMATS = ("onnx", "tensorrt")


def _one_thread_at_a_time(method: Callable[..., Any]) -> Callable[..., Any]:
    """learn, save and export write the run folder: a call from a second thread while one runs raises
    :class:`~resel_train.persist.runlock.RunLocked` at once (the same thread may nest them, e.g. save in a callback)."""

    @functools.wraps(method)
    def wrapper(self: RESeL, *args: Any, **kwargs: Any) -> Any:
        if not self._busy.acquire(blocking=False):
            raise RunLocked(f"this model is busy in {self._busy_with} on another thread; call {method.__name__}() "
                            "after it returns (two threads training or saving one run would overwrite each other)")
        outer = self._busy_with
        self._busy_with = f"{method.__name__}()"
        try:
            return method(self, *args, **kwargs)
        finally:
            self._busy_with = outer
            self._busy.release()

    return wrapper


class RESeL:
    """A RESeL agent on one task, backed by a :class:`~resel_train.trainer.Trainer` and its run folder.

    ``RESeL(env_id, preset="auto", seed=None, out=None, device=None, **overrides)``: ``preset`` as
    in ``resel train --preset`` (auto: the task family's paper preset when training on a CUDA GPU,
    its ``cpu`` variant otherwise; ``model.config.preset`` says which); the run folder is
    ``<out>/<env_id>_<encoder>_s<seed>/`` (or ``run_dir=``), created here. ``seed``, ``out`` and
    ``device`` left at None take the config file's or ``overrides``' value, else 0, ``"runs"`` and
    ``"auto"``. ``overrides`` are config keys, dotted (``**{"algo.batch_size": 128}``) or as section
    dicts (``algo={"batch_size": 128}``); an unknown key or a wrong type raises ValueError naming it.
    ``config=``: a TOML/YAML file of config values (it may name a ``preset``), applied before
    ``overrides``; ``set=``: ``resel train --set`` strings (``["algo.batch_size=128", "seed=3"]``),
    applied with ``overrides``. The order is that of :func:`~resel_train.config.resolve_config`: preset
    -> per-task overrides -> file -> set/overrides -> these arguments. ``resume=True`` continues the
    run already in the run folder (then only the keys given here are compared with the run's, as
    ``resel train --resume`` does).
    """

    def __init__(self, env_id: str, preset: str = "auto", seed: int | None = None, out: str | Path | None = None,
                 device: str | None = None, *, config: str | Path | None = None, set: list[str] | None = None,
                 resume: bool = False, run_dir: str | Path | None = None, **overrides: Any) -> None:
        _check_type("env_id", env_id, str)
        _check_type("preset", preset, str)
        _check_type("seed", seed, (int, type(None)))
        _check_type("out", out, (str, Path, type(None)))
        _check_type("device", device, (str, type(None)))
        _check_type("resume", resume, bool)
        _check_type("set", set, (list, type(None)))
        values = {**parse_overrides(set or []), **overrides}
        cfg = resolve_config(env_id, preset, config, values, seed=seed, out=None if out is None else str(out),
                             device=device)
        requested = flat_keys(values) + (flat_keys(load_config_file(config)) if config else [])
        requested += [k for k, v in (("seed", seed), ("out", out), ("device", device)) if v is not None]
        requested += ["preset"] if preset != "auto" else []
        try:
            trainer = Trainer(cfg, run_dir=run_dir, resume=resume, requested_keys=requested)
        except FileExistsError as exc:
            raise FileExistsError(f"{exc} (from Python: RESeL(..., resume=True) continues it; or pass another "
                                  "out=, seed= or run_dir=)") from None
        self._setup(trainer=trainer, checkpoint=None, device=trainer.device, seed=cfg.seed)

    def _setup(self, trainer: Trainer | None, checkpoint: dict[str, Any] | None, device: torch.device,
               seed: int, source: Path | None = None, run_dir: Path | None = None) -> None:
        self._trainer = trainer
        self._loaded = checkpoint  # a checkpoint loaded by RESeL.load (until learn opens a trainer)
        self._source = source
        self._load_run_dir = run_dir
        self._device = device
        self._rng = np.random.default_rng(seed)  # noise of stochastic predict()
        self._stepwise: StepwisePolicy | None = None
        self._busy, self._busy_with = threading.RLock(), ""
        self._counter_start = 0  # run_timesteps where num_timesteps restarted (learn(reset_num_timesteps=True))

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device: str = "auto", run_dir: str | Path | None = None) -> RESeL:
        """A model from a checkpoint (``save``, or a run folder's checkpoint.pt); checksum verified.

        ``predict`` and ``export`` work at once (``device``: where predict runs). ``learn`` continues
        the saved run exactly -- weights, optimisers, alpha, counters, RNG streams and replay -- but
        only if the checkpoint's replay partner (the ``replay-<step>.pt`` it names) lies next to it
        (``save(path, include_replay=True)`` writes it; a run folder has it); otherwise ``learn``
        raises FileNotFoundError. It trains in ``run_dir``: by default the run folder itself for a
        ``checkpoint.pt``, else a folder named after the file (``p.pt`` -> ``p/``) that gets a copy of
        the two files. Training runs on the run's own device (``cfg.device``).
        """
        _check_type("path", path, (str, Path))
        _check_type("device", device, str)
        path = Path(path)
        data = load_checkpoint(path)
        if "config" not in data or "policy" not in data:
            raise ValueError(f"{path} is not a training checkpoint (no config or policy): use one written by "
                             "RESeL.save or `resel train`")
        model = cls.__new__(cls)
        model._setup(trainer=None, checkpoint=data, device=resolve_device(device), seed=int(data["config"]["seed"]),
                     source=path, run_dir=None if run_dir is None else Path(run_dir))
        return model

    def _open_trainer(self) -> Trainer:
        """The trainer of a loaded model: resume its run (see :meth:`load`)."""
        data, source = self._loaded, self._source
        replay = source.parent / referenced_replay(data)
        if not replay.is_file():
            raise FileNotFoundError(
                f"learn() continues {source} only with its replay file {replay} beside it (save(path, "
                "include_replay=True) writes it; a run folder holds it); predict() and export() work without it")
        run_dir = self._load_run_dir or (source.parent if source.name == CHECKPOINT else source.with_suffix(""))
        if run_dir.resolve() != source.parent.resolve():
            if (run_dir / CHECKPOINT).exists():
                raise FileExistsError(f"{run_dir} already holds a run; pass RESeL.load(..., run_dir=...) to "
                                      f"continue {source} somewhere else")
            atomic_write(run_dir / CHECKPOINT, source.read_bytes())
            atomic_write(run_dir / replay.name, replay.read_bytes())
        trainer = Trainer(config_from_dict(data["config"]), run_dir=run_dir, resume=True, requested_keys=[])
        self._trainer, self._loaded, self._source = trainer, None, None
        return trainer

    # ---- properties ---------------------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        """The underlying Trainer (for power users); for a loaded model this resumes its run (see :meth:`load`)."""
        return self._trainer if self._trainer is not None else self._open_trainer()

    @property
    def config(self) -> TrainConfig:
        """The run's resolved config (the live trainer's, or the one stored in the loaded checkpoint)."""
        return self._trainer.cfg if self._trainer is not None else config_from_dict(self._loaded["config"])

    @property
    def env_id(self) -> str:
        """The task id this agent trains and acts on."""
        return self.config.env

    @property
    def num_timesteps(self) -> int:
        """Environment steps as Stable-Baselines3 reports them: since the start of the last ``learn`` call
        made with ``reset_num_timesteps=True`` (the default); before any such call, :attr:`run_timesteps`."""
        return self.run_timesteps - self._counter_start

    @property
    def run_timesteps(self) -> int:
        """The run's own step counter: every environment step since the run began, over every learn call,
        resume and load; it never goes back (checkpoints and metrics rows are named by it)."""
        if self._trainer is not None:
            return self._trainer.env_steps
        return int(self._loaded["counters"]["env_steps"])

    @property
    def run_dir(self) -> Path | None:
        """The run folder (None for a loaded model that has not trained yet)."""
        return self._trainer.run_dir if self._trainer is not None else None

    @property
    def device(self) -> torch.device:
        """Where predict runs."""
        return self._device

    # ---- training -----------------------------------------------------------------------------
    @_one_thread_at_a_time
    def learn(self, total_timesteps: int, callbacks: BaseCallback | Iterable[BaseCallback] | None = None,
              progress_bar: bool = False, reset_num_timesteps: bool = True) -> RESeL:
        """Train ``total_timesteps`` more environment steps, then save the run; returns self.

        As in Stable-Baselines3, every call trains that many steps more, continuing where the last
        call stopped (same replay, optimisers and counters): ``learn(10_000); learn(10_000,
        reset_num_timesteps=False)`` trains 20,000 steps. ``reset_num_timesteps`` decides only what
        :attr:`num_timesteps` reports: True (the default) restarts it from 0 at this call, False keeps
        counting. The run's own step counter (:attr:`run_timesteps`, which names checkpoints and the
        rows of metrics.csv) never goes back. ``callbacks`` are added to the defaults (evaluation every
        ``eval_every``, a checkpoint every ``checkpoint_every`` steps); one of class
        :class:`~resel_train.callbacks.EvalCallback` or ``CheckpointCallback`` replaces that default.
        A call that would end the run before ``warmup_steps`` is refused (no update would run).
        Ctrl-C saves and raises :class:`~resel_train.trainer.TrainingInterrupted`.
        """
        _check_type("total_timesteps", total_timesteps, int)
        _check_type("progress_bar", progress_bar, bool)
        _check_type("reset_num_timesteps", reset_num_timesteps, bool)
        if total_timesteps < 1:
            raise ValueError(f"total_timesteps must be >= 1; got {total_timesteps}")
        trainer = self.trainer
        chain = with_defaults(trainer.cfg, callbacks)
        target = trainer.env_steps + total_timesteps
        if target < trainer.cfg.warmup_steps:  # as `resel train --steps`; a run saved so would not resume
            raise ValueError(f"total_timesteps={total_timesteps} ends the run at step {target}, before the warm-up "
                             f"of {trainer.cfg.warmup_steps} random steps (no update would run); train at least "
                             f"{trainer.cfg.warmup_steps - trainer.env_steps} steps")
        if reset_num_timesteps:
            self._counter_start = trainer.env_steps
        for c in chain:
            c.init_callback(trainer, self)
        trainer.train(until_step=target, show_progress=progress_bar, callbacks=chain)
        return self

    # ---- saving and export ----------------------------------------------------------------------
    def _checkpoint_path(self) -> Path:
        """A checkpoint file holding the current weights (the run folder's, saved first if behind)."""
        if self._trainer is None:
            return self._source
        self._trainer.save()  # no-op when the unit on disk is at this step already
        return self._trainer.run_dir / CHECKPOINT

    @_one_thread_at_a_time
    def save(self, path: str | Path, include_replay: bool = False) -> Path:
        """Write a checkpoint to ``path`` (a byte copy of the run's unit: same format, same checksum).

        ``RESeL.load``, ``resel eval/export/info`` and ``Controller.load(path, backend="torch")`` read
        it. ``include_replay=True`` also writes the replay file it names next to it, so that a loaded
        model can ``learn`` on exactly (the replay can be large; predict and export never need it).
        """
        _check_type("path", path, (str, Path))
        _check_type("include_replay", include_replay, bool)
        path = Path(path)
        if path.suffix.lower() in (".onnx", *ENGINE_SUFFIXES):
            raise ValueError(f"save() writes a checkpoint, not {path.suffix} (use export({str(path)!r}))")
        if path.is_dir():
            raise ValueError(f"path {path} is a directory; pass a file name such as {path / 'model.pt'}")
        source = self._checkpoint_path()
        if path.resolve() != source.resolve():
            atomic_write(path, source.read_bytes())
        if include_replay:
            replay = source.parent / referenced_replay(load_checkpoint(path))
            if path.parent.resolve() != source.parent.resolve():
                atomic_write(path.parent / replay.name, replay.read_bytes())
        return path

    @_one_thread_at_a_time
    def export(self, path: str | Path, format: str | None = None, fp16: bool = False) -> Any:
        """ONNX (``.onnx``; returns the :class:`~resel.export.onnx.ExportReport`, parity-checked) or a TensorRT
        engine (``.engine``/``.plan``/``.trt``; returns its path; needs a GPU), by suffix or ``format``."""
        _check_type("path", path, (str, Path))
        _check_type("fp16", fp16, bool)
        path = Path(path)
        if format is None:
            suffix = path.suffix.lower()
            format = "onnx" if suffix == ".onnx" else "tensorrt" if suffix in ENGINE_SUFFIXES else None
            if format is None:
                raise ValueError(f"cannot tell the export format from {path.name!r}: use .onnx or "
                                 f"{'/'.join(ENGINE_SUFFIXES)}, or pass format= one of {FORMATS}")
        format = "tensorrt" if format == "trt" else format
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}; got {format!r}")
        checkpoint = self._checkpoint_path()
        if format == "onnx":
            from resel.export.onnx import export_onnx

            return export_onnx(checkpoint, path, fp16=fp16)
        from resel.export.tensorrt import build_engine

        return build_engine(checkpoint, path, fp16=fp16)

    # ---- inference ------------------------------------------------------------------------------
    def policy(self) -> StepwisePolicy:
        """The stepwise policy (what the controller and the export run): around the live training weights
        when this model has a trainer (no copy: the trainer collects through the same module), else the
        loaded checkpoint's, on ``device``."""
        t = self._trainer
        if t is not None and (self._stepwise is None or self._stepwise.policy is not t.policy):
            spec = t.model_spec
            meta = {k: spec[k] for k in ("task_id", "encoder", "encoder_kwargs", "embed", "hidden")}
            self._stepwise = StepwisePolicy(t.policy, spec["action_low"], spec["action_high"], meta,
                                            live=True).to(t.device)
        elif self._stepwise is None:
            self._stepwise = StepwisePolicy.from_checkpoint(self._source).to(self._device)
        return self._stepwise

    def predict(self, observation: Any, state: Mapping[str, np.ndarray] | None = None,
                episode_start: Any = None, deterministic: bool = False,
                reward: Any = None, safe_action: Any = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The next action (env units) and the new state, as SB3's recurrent ``predict``.

        ``observation``: (obs_dim,) or (n_envs, obs_dim). ``state``: what the last call returned
        (None: every row starts an episode); a dict of numpy arrays holding the encoder memory and the
        previous observation and action. ``episode_start``: bool, or (n_envs,) bools -- True where
        this observation is the first of an episode (that row's memory is reset). ``reward``: the
        reward the previous action got, scalar or (n_envs,); only tasks that feed rewards to the
        policy use it, and for them it is required after an episode's first step.
        ``deterministic``: tanh(mean); otherwise sampled with this model's seeded numpy generator.
        A non-finite action is never returned, as with :class:`~resel_deploy.Controller`: it raises
        :class:`~resel_deploy.NonFiniteAction`, or, given ``safe_action`` (env units, within the bounds), those rows
        get it and their returned state is zeroed (their next call starts an episode). A NaN/inf input raises ValueError.
        """
        stepwise = self.policy()
        safe = None if safe_action is None else checked_safe_action(
            safe_action, np.asarray(stepwise.action_low, np.float32), np.asarray(stepwise.action_high, np.float32))
        obs = _as_float("observation", observation)
        single = obs.ndim == 1
        if obs.ndim not in (1, 2) or obs.shape[-1] != stepwise.obs_dim:
            raise ValueError(f"observation must have shape ({stepwise.obs_dim},) or (n_envs, {stepwise.obs_dim}); "
                             f"got {obs.shape}")
        obs = obs.reshape(-1, stepwise.obs_dim)
        n = obs.shape[0]
        names = stepwise.state_names()
        if state is None:
            state = {s.name: np.zeros((n, *s.shape), np.float32) for s in stepwise.state_spec()}
            start = np.ones(n, np.float32)
        else:
            if not isinstance(state, Mapping) or set(state) != set(names):
                raise ValueError(f"state must be the dict predict() returned, with keys {names}; "
                                 f"got {type(state).__name__}{'' if not isinstance(state, Mapping) else sorted(state)}")
            for s in stepwise.state_spec():
                if np.shape(state[s.name]) != (n, *s.shape):
                    raise ValueError(f"state[{s.name!r}] has shape {np.shape(state[s.name])}, expected "
                                     f"{(n, *s.shape)} for {n} observation row(s)")
                _as_float(f"state[{s.name!r}]", state[s.name])
            start = np.zeros(n, np.float32)
        if episode_start is not None:
            flags = np.asarray(episode_start)
            if flags.dtype.kind not in "bui" or flags.shape not in ((), (n,), (n, 1)):
                raise ValueError(f"episode_start must be a bool or {n} bools; got {episode_start!r:.80}")
            start = np.maximum(start, np.broadcast_to(flags.reshape(-1) if flags.ndim else flags, (n,)))
        if reward is None:
            if stepwise.reward_as_input and not start.all():
                raise ValueError(f"{self.env_id} feeds the previous reward to the policy: pass reward= (the reward "
                                 "of the previous step) to predict")
            rew = np.zeros((n, 1), np.float32)
        else:
            r = _as_float("reward", reward)
            if r.shape not in ((), (n,), (n, 1)):
                raise ValueError(f"reward must be a number or have shape ({n},); got {r.shape}")
            rew = np.broadcast_to(r.reshape(-1, 1) if r.ndim else r, (n, 1))
        noise = np.zeros((n, stepwise.act_dim), np.float32)
        if not deterministic:  # the space's own noise: Gaussian for a Box, Gumbel (exact sampling) for a Discrete
            stepwise.actions.sample_noise(self._rng, noise)
        device = stepwise.space.act_scale.device
        as_t = lambda a: torch.tensor(np.asarray(a, np.float32), device=device)  # noqa: E731
        with torch.inference_mode():
            out = stepwise(as_t(obs), as_t(rew), as_t(start), as_t(noise), *(as_t(state[k]) for k in names))
        action = out[0].cpu().numpy()
        new_state = {k: t.cpu().numpy() for k, t in zip(names, out[3:], strict=True)}
        rows = np.flatnonzero(~np.isfinite(action.reshape(n, -1)).all(axis=1))
        if len(rows):
            if safe is None:
                raise NonFiniteAction(
                    f"predict produced a non-finite action for row(s) {rows.tolist()}; it was not returned. The state "
                    "or the model's weights are out of range: start those rows again (state=None or episode_start="
                    "True), or pass safe_action=... to predict to act safely instead of raising")
            action[rows] = safe
            for value in new_state.values():
                value[rows] = 0.0
        return (action[0] if single else action), new_state

    def __repr__(self) -> str:
        return f"RESeL(env_id={self.env_id!r}, run_timesteps={self.run_timesteps}, run_dir={self.run_dir})"


def _check_type(name: str, value: Any, types: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join("None" if t is type(None) else t.__name__
                            for t in (types if isinstance(types, tuple) else (types,)))
        raise TypeError(f"{name} must be {names}; got {type(value).__name__} {value!r:.60}")


def _as_float(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric; got {type(value).__name__} {value!r:.60}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr
