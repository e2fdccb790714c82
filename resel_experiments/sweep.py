"""A sweep's grid and its manifest; torch-free, and nothing here imports Ray (see runner; a trial's body is
in trials).

A sweep folder holds one normal run folder per trial (``<env>_<encoder>_s<seed>/``) and ``sweep.json``,
the manifest: the grid that defines the trials and each trial's last known status. Whether a trial
is finished, to be resumed or to be started fresh is decided from its run folder (the checkpoint's
step counter against the target), so a sweep can be killed at any point and simply started again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resel_train.config import TrainConfig, resolve_config, run_dir_for
from resel_train.nets.registry import ENCODER_NAMES
from resel_train.persist.atomic import atomic_write

MANIFEST = "sweep.json"
MANIFEST_FORMAT = "resel-sweep"
MANIFEST_VERSION = 1
STATUSES = ("pending", "running", "finished", "failed", "lost", "interrupted")
ENCODERS = ENCODER_NAMES  # every encoder of the registry


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
        """ENV/encoder/seed."""
        return trial_id(self.env, self.encoder, self.seed)

    @property
    def run_dir(self) -> Path:
        """The trial's run folder (``<sweep folder>/<env>_<encoder>_s<seed>``)."""
        return run_dir_for(self.config)


@dataclass
class TrialRecord:
    """A trial's line in the manifest: what the driver last saw of it."""

    env: str
    encoder: str
    seed: int
    run: str  # run folder name inside the sweep folder
    target_steps: int
    status: str = "pending"  # one of STATUSES; lost: its Ray worker or node died (resumable)
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
        """Write the manifest atomically (a reader never sees half of it)."""
        data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "grid": asdict(self.grid),
                "resources": self.resources,
                "trials": {key: asdict(rec) for key, rec in self.trials.items()}}
        atomic_write(Path(sweep_dir) / MANIFEST, (json.dumps(data, indent=1) + "\n").encode())

    @classmethod
    def load(cls, sweep_dir: Path) -> Manifest | None:
        """The manifest of ``sweep_dir`` (None when there is none), checked key by key: :class:`ManifestError`
        names the file, the key and the fix instead of a KeyError or TypeError from deep inside the driver."""
        path = Path(sweep_dir) / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(path, f"is not valid JSON ({' '.join(str(exc).split())[:100]}); it was cut short or "
                                      "edited") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(path, "is not a resel sweep manifest (no \"format\": \"resel-sweep\")")
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(path, f"has manifest version {data.get('version')!r}; this toolkit reads version "
                                      f"{MANIFEST_VERSION}")
        for key, kind in (("grid", dict), ("trials", dict), ("resources", dict)):
            if key not in data and key != "resources":
                raise ManifestError(path, f"has no {key!r} object")
            if not isinstance(data.get(key, {}), kind):
                raise ManifestError(path, f"key {key!r} must be a JSON object; got {data.get(key)!r:.60}")
        grid = SweepGrid(**_checked(path, "grid", data["grid"], _GRID_FIELDS, required=("envs", "seeds")))
        trials = {}
        for key, rec in data["trials"].items():
            record = TrialRecord(**_checked(path, f"trials[{key!r}]", rec, _RECORD_FIELDS,
                                            required=("env", "encoder", "seed", "run", "target_steps")))
            if key != trial_id(record.env, record.encoder, record.seed):
                raise ManifestError(path, f"key trials[{key!r}] holds trial "
                                          f"{trial_id(record.env, record.encoder, record.seed)!r}")
            trials[key] = record
        return cls(grid, data.get("resources", {}), trials)


class ManifestError(ValueError):
    """A sweep.json that cannot be used; the message names the file, the problem and the fix."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}; fix it, or move it away and start the sweep again with --envs and "
                         "--seeds (trials whose run folders reached their target are skipped, the others resume)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_GRID_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "envs": (lambda v: _names(v) and bool(v), "a non-empty list of task ids"),
    "seeds": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "encoders": (lambda v: _names(v) and bool(v), "a non-empty list of encoder names"),
    "preset": (lambda v: isinstance(v, str), "a preset name"),
    "steps": (_opt(lambda v: _is_int(v) and v >= 1), "a positive integer or null"),
    "overrides": (_names, "a list of key=value strings"),
}
_RECORD_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "env": (lambda v: isinstance(v, str), "a task id"),
    "encoder": (lambda v: isinstance(v, str), "an encoder name"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "run": (lambda v: isinstance(v, str) and bool(v) and "/" not in v and v not in (".", ".."),
            "a run folder name inside the sweep folder"),
    "target_steps": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
    "env_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "eval_return": (_opt(_is_num), "a number or null"),
    "resumed_from": (_opt(_is_int), "an integer or null"),
    "node": (_opt(lambda v: isinstance(v, str)), "a host name or null"),
    "attempts": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "error": (_opt(lambda v: isinstance(v, str)), "text or null"),
    "traceback": (_opt(lambda v: isinstance(v, str)), "text or null"),
    "updated": (_opt(_is_num), "a time or null"),
}


def _checked(path: Path, where: str, value: Any, fields: dict[str, tuple[Callable[[Any], bool], str]],
             required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(path, f"key {where} must be a JSON object; got {value!r:.60}")
    unknown = sorted(set(value) - set(fields))
    missing = [k for k in required if k not in value]
    if unknown or missing:
        raise ManifestError(path, f"key {where} has {'unknown key ' + repr(unknown[0]) if unknown else ''}"
                                  f"{' and ' if unknown and missing else ''}"
                                  f"{'no ' + repr(missing[0]) if missing else ''}")
    for key, item in value.items():
        check, expected = fields[key]
        if not check(item):
            raise ManifestError(path, f"key {where}.{key} must be {expected}; got {item!r:.60}")
    return value


def trial_id(env: str, encoder: str, seed: int) -> str:
    """The trial's name in the manifest and in ``--only``: ENV/encoder/seed."""
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


def record_for(trial: Trial, sweep_dir: Path) -> TrialRecord:
    """The manifest entry of a planned trial (its run folder relative to the sweep folder)."""
    return TrialRecord(trial.env, trial.encoder, trial.seed, str(trial.run_dir.relative_to(Path(sweep_dir).resolve())),
                       trial.config.steps)
