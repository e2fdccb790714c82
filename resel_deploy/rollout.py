"""Episodes against the simulators, driven by a :class:`Controller`, with per-step latency statistics."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resel_deploy import bridge
from resel_deploy.controller import Controller


@dataclass
class RolloutReport:
    """Per-episode returns and lengths, and controller-step latency percentiles in microseconds."""

    model: str
    env_id: str
    backend: str
    split: str
    seed: int
    stochastic: bool
    returns: list[float]
    lengths: list[int]
    latency_us: dict[str, float]  # p50, p90, p99, max, mean over every controller step
    steps: int
    wall_s: float
    notes: list[str] = field(default_factory=list)
    successes: list[bool] | None = None  # per episode, for tasks whose env reports info["success"] (Key-to-Door)
    # filled only with record=True: per step, the controller's inputs and output
    observations: list[np.ndarray] | None = field(default=None, repr=False)
    rewards_in: list[float] | None = field(default=None, repr=False)
    first: list[bool] | None = field(default=None, repr=False)
    actions: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def mean_return(self) -> float:
        """Mean episode return (NaN for no episodes)."""
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std_return(self) -> float:
        """Population standard deviation of the episode returns (NaN for no episodes)."""
        return float(np.std(self.returns)) if self.returns else float("nan")

    @property
    def success_rate(self) -> float | None:
        """Fraction of episodes the env reported as a success; None where it reports none."""
        return float(np.mean(self.successes)) if self.successes else None

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values (the per-step traces left out)."""
        d = asdict(self)
        for key in ("observations", "rewards_in", "first", "actions"):
            d.pop(key)
        d.update(mean_return=self.mean_return, std_return=self.std_return, success_rate=self.success_rate)
        return d

    def table(self):
        """A ``rich.table.Table``: one row per episode, then the summary and latency percentiles."""
        from rich.table import Table

        lat = self.latency_us
        success = "" if self.success_rate is None else f"success rate {self.success_rate:.0%}; "
        table = Table(
            title=f"{self.env_id} ({self.split}) | {Path(self.model).name} | backend {self.backend}",
            caption=(success + f"return {self.mean_return:.1f} +- {self.std_return:.1f} over {len(self.returns)} episodes; "
                     f"step latency p50 {lat['p50']:.1f} us, p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, "
                     f"max {lat['max']:.1f} ({self.steps} steps)" + "".join(f"\n{n}" for n in self.notes)),
        )
        table.add_column("episode", justify="right")
        table.add_column("return", justify="right")
        table.add_column("length", justify="right")
        if self.successes:
            table.add_column("success", justify="right")
        for i, (ret, length) in enumerate(zip(self.returns, self.lengths, strict=False)):
            table.add_row(str(i), f"{ret:.2f}", str(length), *(["yes" if self.successes[i] else "no"]
                                                              if self.successes else []))
        return table


def latency_stats(samples_ns: np.ndarray) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean of step times given in nanoseconds, reported in microseconds."""
    us = np.asarray(samples_ns, dtype=np.float64) / 1e3
    if us.size == 0:
        return {k: float("nan") for k in ("p50", "p90", "p99", "max", "mean")}
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(us.max()), "mean": float(us.mean())}


def run_rollouts(
    model: str | Path | Controller,
    env_id: str | None,
    episodes: int,
    backend: str = "onnxruntime",
    seed: int = 0,
    stochastic: bool = False,
    split: str = "test",
    max_steps: int | None = None,
    record: bool = False,
    env=None,
    flush_denormals: bool = True,
    device: str | None = None,
) -> RolloutReport:
    """Run ``episodes`` episodes of ``env_id`` with a controller and time every controller step.

    ``model``: a checkpoint, an .onnx file, a TensorRT engine, or a loaded :class:`Controller`
    (batch 1). ``env_id``: a RESeL task id (``resel envs``) built with
    ``resel_train.envs.make_env(env_id, seed, split)``, or None for the task the model was trained
    on (its metadata ``task_id``); ``split="test"`` selects held-out tasks where a family has them.
    The environment is seeded once with ``seed`` (episodes follow from it), the controller samples
    with the same seed when ``stochastic``. Deterministic actions by
    default. ``max_steps`` caps each episode. ``record`` keeps every step's observation, reward
    input, episode-start flag and action in the report. ``env``: use this Gymnasium env instead.
    ``flush_denormals``: passed to :meth:`Controller.load` (it sets FTZ/DAZ on the calling thread;
    pass False when calling from a training process that should keep its float environment).
    ``device``: for the torch backend, where the policy runs ("cpu" by default, or "cuda").
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    ctrl = model if isinstance(model, Controller) else Controller.load(
        model, backend=backend, stochastic=stochastic, seed=seed, flush_denormals=flush_denormals, device=device
    )
    if ctrl.batch != 1:
        raise ValueError("run_rollouts needs a controller with batch=1")
    if env_id is None:
        env_id = ctrl.task_id
        if env_id is None and env is None:
            raise ValueError(f"{ctrl.metadata.get('source', model)} does not record its task id; pass env_id")
    if env is None:
        env = bridge.make_env(env_id, seed=seed, split=split)
    notes = _check_spaces(ctrl, env, str(env_id))
    lat_ns: list[int] = []
    returns, lengths, successes = [], [], []
    rec_obs, rec_rew, rec_first, rec_act = [], [], [], []
    out = ctrl.actions.out_buffer()  # steps write into it (a Discrete space's steps return ints instead)
    perf = time.perf_counter_ns
    start = time.perf_counter()
    try:
        for _ in range(episodes):
            obs, _info = env.reset()
            ctrl.reset()
            reward, ret, length, first = 0.0, 0.0, 0, True
            while True:
                t0 = perf()
                action = ctrl.step(obs, reward, out=out)
                lat_ns.append(perf() - t0)
                if record:
                    rec_obs.append(np.array(obs, dtype=np.float32))
                    rec_rew.append(float(reward))
                    rec_first.append(first)
                    rec_act.append(np.array(action))
                obs, reward, terminated, truncated, _info = env.step(action)
                reward = float(reward)
                ret += reward
                length += 1
                first = False
                if terminated or truncated or (max_steps is not None and length >= max_steps):
                    break
            returns.append(ret)
            lengths.append(length)
            if "success" in _info:
                successes.append(bool(_info["success"]))
    finally:
        env.close()
    return RolloutReport(
        model=str(ctrl.metadata.get("source", model)), env_id=env_id, backend=ctrl.backend, split=split, seed=seed,
        stochastic=ctrl.stochastic, returns=returns, lengths=lengths, latency_us=latency_stats(np.array(lat_ns)),
        steps=len(lat_ns), wall_s=time.perf_counter() - start, notes=notes, successes=successes or None,
        observations=rec_obs if record else None, rewards_in=rec_rew if record else None,
        first=rec_first if record else None, actions=rec_act if record else None,
    )


def _check_spaces(ctrl: Controller, env, env_id: str) -> list[str]:
    from gymnasium import spaces

    notes = []
    obs_space, act_space = env.observation_space, env.action_space
    actions = ctrl.actions
    if not (isinstance(act_space, (spaces.Box, spaces.Discrete)) and actions.matches_kind(act_space)):
        raise ValueError(f"{env_id} has a {type(act_space).__name__} action space; the model emits "
                         f"{actions.describe()}")
    if obs_space.shape != (ctrl.obs_dim,):
        raise ValueError(f"{env_id} observations have shape {obs_space.shape}, the model expects ({ctrl.obs_dim},)")
    mismatch = actions.size_mismatch(act_space)
    if mismatch is not None:
        raise ValueError(f"{env_id} {mismatch}")
    note = actions.bounds_note(act_space)
    if note is not None:
        notes.append(note)
    if ctrl.task_id and ctrl.task_id != env_id:
        notes.append(f"note: the model was trained on {ctrl.task_id}, running it on {env_id}")
    return notes
