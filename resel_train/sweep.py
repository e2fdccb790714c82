"""A sweep's grid, its manifest and one trial's body; nothing here imports Ray (see sweep_runner).

A sweep folder holds one normal run folder per trial (``<env>_<encoder>_s<seed>/``) and ``sweep.json``,
the manifest: the grid that defines the trials and each trial's last known status. Whether a trial
is finished, to be resumed or to be started fresh is decided from its run folder (the checkpoint's
step counter against the target), so a sweep can be killed at any point and simply started again.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resel_train.atomic import atomic_write
from resel_train.checkpoint import load_checkpoint, remove_unreferenced
from resel_train.config import TrainConfig, config_from_dict, resolve_config
from resel_train.trainer import CHECKPOINT, Trainer, run_dir_for

MANIFEST = "sweep.json"
MANIFEST_FORMAT = "resel-sweep"
ENCODERS = ("mamba", "gru", "mlp")


@dataclass
class SweepGrid:
    """Everything that defines the trials; stored in the manifest so a restart needs only ``--out``."""

    envs: list[str]
    seeds: int
    encoders: list[str] = field(default_factory=lambda: ["mamba"])
    preset: str = "auto"
    steps: int | None = None  # None: each task's preset budget
    overrides: list[str] = field(default_factory=list)


@dataclass
class Trial:
    env: str
    encoder: str
    seed: int
    config: TrainConfig

    @property
    def id(self) -> str:
        return trial_id(self.env, self.encoder, self.seed)

    @property
    def run_dir(self) -> Path:
        return run_dir_for(self.config)


@dataclass
class TrialRecord:
    """A trial's line in the manifest: what the driver last saw of it."""

    env: str
    encoder: str
    seed: int
    run: str  # run folder name inside the sweep folder
    target_steps: int
    status: str = "pending"  # pending | running | finished | failed | interrupted
    env_steps: int = 0
    eval_return: float | None = None
    resumed_from: int | None = None
    node: str | None = None
    attempts: int = 0
    error: str | None = None
    traceback: str | None = None
    updated: float | None = None


@dataclass
class Manifest:
    grid: SweepGrid
    resources: dict[str, Any] = field(default_factory=dict)
    trials: dict[str, TrialRecord] = field(default_factory=dict)

    def save(self, sweep_dir: Path) -> None:
        data = {"format": MANIFEST_FORMAT, "version": 1, "grid": asdict(self.grid), "resources": self.resources,
                "trials": {key: asdict(rec) for key, rec in self.trials.items()}}
        atomic_write(Path(sweep_dir) / MANIFEST, (json.dumps(data, indent=1) + "\n").encode())

    @classmethod
    def load(cls, sweep_dir: Path) -> Manifest | None:
        path = Path(sweep_dir) / MANIFEST
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path} is not a resel sweep manifest")
        trials = {key: TrialRecord(**rec) for key, rec in data["trials"].items()}
        return cls(SweepGrid(**data["grid"]), data.get("resources", {}), trials)


@dataclass(frozen=True)
class TrialState:
    kind: str  # finished | resume | fresh
    env_steps: int


def trial_id(env: str, encoder: str, seed: int) -> str:
    return f"{env}/{encoder}/{seed}"


def plan_trials(grid: SweepGrid, sweep_dir: Path, cpus_per_trial: float = 1.0) -> list[Trial]:
    """Resolve every trial's config up front, so a typo fails before any cluster work starts.

    Torch threads follow the CPUs Ray gives a trial (at least one), so trials never oversubscribe a node.
    """
    unknown = sorted(set(grid.encoders) - set(ENCODERS))
    if unknown:
        raise ValueError(f"unknown encoder(s) {unknown}; choose from {list(ENCODERS)}")
    if grid.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    if not grid.envs:
        raise ValueError("--envs names no task")
    if cpus_per_trial <= 0:
        raise ValueError("--cpus-per-trial must be positive (0 would let Ray start any number of trials per node)")
    threads = max(1, int(cpus_per_trial))
    trials = []
    for env in grid.envs:
        for encoder in grid.encoders:
            for seed in range(grid.seeds):
                cfg = resolve_config(env, grid.preset, None, grid.overrides, steps=grid.steps, seed=seed,
                                     out=str(Path(sweep_dir).resolve()), threads=threads,
                                     **{"model.encoder": encoder})
                trials.append(Trial(env, encoder, seed, cfg))
    return trials


def trial_state(run_dir: Path, target_steps: int) -> TrialState:
    """finished (checkpoint at or past the target), resume (an earlier checkpoint) or fresh (none)."""
    ckpt = Path(run_dir) / CHECKPOINT
    if not ckpt.exists():
        return TrialState("fresh", 0)
    steps = int(load_checkpoint(ckpt)["counters"]["env_steps"])
    return TrialState("finished" if steps >= target_steps else "resume", steps)


def discard_partial(run_dir: Path) -> None:
    """Remove the logs of a start that died before its first checkpoint: they cannot be continued."""
    run_dir = Path(run_dir)
    for name in ("metrics.csv", "config.yaml"):
        (run_dir / name).unlink(missing_ok=True)
    if run_dir.is_dir():
        remove_unreferenced(run_dir, keep=None)  # replay files and temp files of killed writes
    shutil.rmtree(run_dir / "tb", ignore_errors=True)


def run_trial(config: dict[str, Any], report: Callable[[dict[str, Any]], None] | None = None,
              interval_s: float = 1.0) -> dict[str, Any]:
    """Train one trial to its target, resuming from its checkpoint; ``report`` gets progress rows.

    Runs on a Ray worker. It decides finished/resume/fresh itself (not the driver) so that Ray's
    retry of a crashed worker, or a driver that cannot see the run folder, still resumes correctly.
    """
    cfg = config_from_dict(config)
    run_dir = run_dir_for(cfg)
    state = trial_state(run_dir, cfg.steps)
    base = {"node": socket.gethostname(), "target_steps": cfg.steps,
            "resumed_from": state.env_steps if state.kind == "resume" else None}
    if state.kind == "finished":
        return {**base, "status": "skipped", "env_steps": state.env_steps, "eval_return": None}
    if state.kind == "fresh":
        discard_partial(run_dir)
    trainer = Trainer(cfg, run_dir=run_dir, resume=state.kind == "resume")

    def snapshot(rate: float) -> dict[str, Any]:
        return {**base, "env_steps": trainer.env_steps, "eval_return": trainer.last_eval, "steps_per_s": rate}

    stop = threading.Event()

    def report_loop() -> None:
        last_steps, last_time = trainer.env_steps, time.perf_counter()
        while not stop.wait(interval_s):
            now, steps = time.perf_counter(), trainer.env_steps
            report(snapshot((steps - last_steps) / (now - last_time)))
            last_steps, last_time = steps, now

    thread = threading.Thread(target=report_loop, daemon=True) if report else None
    if thread:
        report(snapshot(0.0))
        thread.start()
    try:
        result = trainer.train(show_progress=False)
    finally:
        stop.set()
        if thread:
            thread.join()
    return {**base, "status": "finished", "env_steps": int(result["env_steps"]), "eval_return": result["eval_return"]}


def record_for(trial: Trial, sweep_dir: Path) -> TrialRecord:
    return TrialRecord(trial.env, trial.encoder, trial.seed, str(trial.run_dir.relative_to(Path(sweep_dir).resolve())),
                       trial.config.steps)
