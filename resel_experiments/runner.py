"""Run a sweep's trials as Ray tasks, locally or on a cluster, with live progress and a manifest.

Ray core tasks give what a sweep needs: per-trial CPUs and (fractional) GPUs, re-execution when a
worker or node dies (the retried task resumes from the trial's checkpoint), and placement across
nodes. Progress comes from each trial through a small actor, so the driver needs no view of the
run folders to show it; the run folders themselves must be on a filesystem every node shares
(docs/scale-out.md) for resumes across nodes and for `resel report`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

try:
    import ray
    from ray.exceptions import RayError, RayTaskError
except ImportError as exc:
    from resel_deploy.extras import install_hint

    raise ImportError(f"`resel sweep` needs Ray: {install_hint('ray')}") from exc

import resel_train
from resel_experiments.sweep import Manifest, SweepGrid, Trial, TrialRecord, plan_trials, record_for
from resel_experiments.trials import run_trial, trial_state
from resel_train.config import config_to_dict
from resel_train.persist.checkpoint import CHECKPOINT, CheckpointError
from resel_train.persist.runlock import RunLock

SWEEP_LOCK = "sweep.lock"


@dataclass
class SweepOptions:
    address: str | None = None  # None: start a local Ray instance; "auto" or "ray://host:port": a cluster
    num_cpus: int | None = None  # CPUs of a local instance (default: all)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 2  # re-runs of a trial whose worker or node died
    only: list[str] = field(default_factory=list)  # trial ids ENV/encoder/seed
    retry_failed: bool = False
    report_every_s: float = 30.0  # status lines when stdout is not a terminal


@dataclass
class SweepResult:
    manifest: Manifest
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished
    failed: list[str] = field(default_factory=list)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest progress row of every trial, written by the trials, read by the driver."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def report(self, trial_id: str, row: dict[str, Any]) -> None:
        """Store a trial's latest progress row."""
        self.rows[trial_id] = row

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The latest row of every trial (read by the driver's display)."""
        return self.rows


def _trial_task(config: dict[str, Any], trial_id: str, board: Any) -> dict[str, Any]:
    return run_trial(config, lambda row: board.report.remote(trial_id, row))


_remote_trial = ray.remote(_trial_task)


def run_sweep(sweep_dir: str | Path, grid: SweepGrid | None, options: SweepOptions,
              console: Console | None = None) -> SweepResult:
    """Run (or continue) the sweep in ``sweep_dir``; ``grid`` None reuses the manifest's grid.

    One driver per sweep folder: ``sweep.lock`` (a kernel flock, free when its holder dies) is taken before the
    manifest is read, so a second driver is refused naming the holder; :class:`~resel_train.persist.runlock.RunLocked`.
    """
    console = console or Console()
    sweep_dir = Path(sweep_dir).resolve()
    lock = _lock(sweep_dir) if sweep_dir.is_dir() else None  # a new folder is locked once the grid is checked
    try:
        return _run_locked(sweep_dir, grid, options, console, lock)
    finally:
        if lock is not None:
            lock.release()


def _lock(sweep_dir: Path) -> RunLock:
    return RunLock(sweep_dir, SWEEP_LOCK, "two drivers on one sweep would run its trials twice and overwrite "
                                          "each other's sweep.json").acquire()


def _run_locked(sweep_dir: Path, grid: SweepGrid | None, options: SweepOptions, console: Console,
                lock: RunLock | None) -> SweepResult:
    manifest = Manifest.load(sweep_dir)
    grid = grid or (manifest.grid if manifest else None)
    if grid is None:
        raise ValueError(f"no {sweep_dir / 'sweep.json'}: give --envs and --seeds to start a sweep there")
    trials = plan_trials(grid, sweep_dir, options.cpus_per_trial)
    manifest = manifest or Manifest(grid)
    manifest.grid = grid
    manifest.resources = {"address": options.address, "cpus_per_trial": options.cpus_per_trial,
                          "gpus_per_trial": options.gpus_per_trial}
    for trial in trials:
        fresh = record_for(trial, sweep_dir)
        old = manifest.trials.get(trial.id)
        manifest.trials[trial.id] = fresh if old is None else _retarget(old, fresh)
    selected = _select(trials, manifest, options)
    result = SweepResult(manifest)
    todo = []
    for trial in selected:
        rec = manifest.trials[trial.id]
        try:
            state = trial_state(trial.run_dir, trial.config.steps)
        except CheckpointError as exc:
            _fail(rec, f"CheckpointError: {exc}", None)
            result.failed.append(trial.id)
            continue
        rec.env_steps = state.env_steps
        if state.kind == "finished":
            rec.status, rec.error, rec.traceback = "finished", None, None
            result.skipped.append(trial.id)
        else:
            todo.append(trial)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if lock is None:
        lock = _lock(sweep_dir)
        if Manifest.load(sweep_dir) is not None:  # another driver created this sweep meanwhile: start again
            lock.release()
            return run_sweep(sweep_dir, grid, options, console)
    manifest.save(sweep_dir)
    console.print(f"sweep {sweep_dir}: {len(trials)} trials, {len(selected)} selected, "
                  f"{len(result.skipped)} already finished, {len(todo)} to run")
    if todo:
        _execute(todo, manifest, sweep_dir, options, console, result)
    _print_summary(manifest, [t.id for t in selected], console)
    if result.failed:
        console.print(f"{len(result.failed)} failed; rerun them alone with: resel sweep --out {sweep_dir} --retry-failed")
    return result


def _retarget(old: TrialRecord, fresh: TrialRecord) -> TrialRecord:
    old.target_steps, old.run = fresh.target_steps, fresh.run
    return old


def _select(trials: list[Trial], manifest: Manifest, options: SweepOptions) -> list[Trial]:
    by_id = {t.id: t for t in trials}
    unknown = [i for i in options.only if i not in by_id]
    if unknown:
        raise ValueError(f"--only {unknown[0]!r} is not a trial of this sweep; trials are ENV/encoder/seed, "
                         f"e.g. {next(iter(by_id))}")
    chosen = [by_id[i] for i in options.only] if options.only else trials
    if options.retry_failed:
        chosen = [t for t in chosen if manifest.trials[t.id].status in ("failed", "lost")]
    return chosen


def _fail(rec: TrialRecord, error: str, traceback: str | None) -> None:
    rec.status, rec.error, rec.traceback, rec.updated = "failed", error, traceback, time.time()


def _lose(rec: TrialRecord, trial: Trial, reason: str, traceback: str) -> None:
    """Mark a trial whose worker or node died: status lost, the step its checkpoint holds (where a rerun resumes)."""
    try:
        rec.env_steps = trial_state(trial.run_dir, trial.config.steps).env_steps
    except (OSError, CheckpointError):  # the run folder is not visible here: keep the last reported step
        pass
    rec.status, rec.updated, rec.traceback = "lost", time.time(), traceback
    rec.error = f"{reason}; a rerun resumes it from step {rec.env_steps}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def _runtime_env() -> dict[str, Any]:
    """Put a source checkout on the workers' path (an installed package is found without this)."""
    root = Path(resel_train.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        return {}
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def _connect(options: SweepOptions) -> bool:
    """Start or join Ray; returns whether this call started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    if options.address is None:
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, runtime_env=_runtime_env())
    else:
        ray.init(address=options.address, runtime_env=_runtime_env())
    return True


def _check_resources(options: SweepOptions, console: Console) -> None:
    """A trial asking for more than any node has would wait forever: an error locally, a warning on a
    cluster (an autoscaler may still add a node that fits)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
    best_gpu = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
    if options.cpus_per_trial <= best_cpu and options.gpus_per_trial <= best_gpu:
        return
    message = (f"a trial asks for {options.cpus_per_trial:g} CPUs and {options.gpus_per_trial:g} GPUs but the largest "
               f"node has {best_cpu:g} CPUs and {best_gpu:g} GPUs; lower --cpus-per-trial / --gpus-per-trial")
    if options.address is None:
        raise ValueError(message)
    console.print(f"[yellow]warning[/]: {escape(message)}; trials wait until such a node joins")


def _execute(todo: list[Trial], manifest: Manifest, sweep_dir: Path, options: SweepOptions, console: Console,
             result: SweepResult) -> None:
    started_ray = _connect(options)
    try:
        _check_resources(options, console)
        board = ProgressBoard.remote()
        resources = dict(num_cpus=options.cpus_per_trial, num_gpus=options.gpus_per_trial,
                         max_retries=options.max_retries, retry_exceptions=False)
        pending = {}
        for trial in todo:
            rec = manifest.trials[trial.id]
            rec.status, rec.error, rec.traceback, rec.attempts = "pending", None, None, rec.attempts + 1
            ref = _remote_trial.options(name=trial.id, **resources).remote(config_to_dict(trial.config), trial.id, board)
            pending[ref] = trial
        manifest.save(sweep_dir)
        display = _Display(console, manifest, [t.id for t in todo], options.report_every_s)
        try:
            with display:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                    for ref in done:
                        trial = pending.pop(ref)
                        _collect(ref, trial, manifest, sweep_dir, display, result)
                    if display.update(ray.get(board.snapshot.remote())):
                        manifest.save(sweep_dir)
        except KeyboardInterrupt:
            for ref, trial in pending.items():
                ray.cancel(ref)
                manifest.trials[trial.id].status = "interrupted"
            manifest.save(sweep_dir)
            console.print("interrupted: the trials keep their checkpoints; run the same command again to resume")
            raise
        except RayError as exc:  # the node holding the driver's Ray (or the progress board) died
            reason = f"the Ray node it ran on died ({_first_line(exc)})"
            for trial in pending.values():
                _lose(manifest.trials[trial.id], trial, reason, str(exc))
                result.failed.append(trial.id)
            manifest.save(sweep_dir)
            console.print(f"[red]Ray lost a node[/] ({escape(_first_line(exc))}): {len(pending)} unfinished trials are "
                          f"marked lost in {sweep_dir / 'sweep.json'}; they keep their checkpoints: run the same "
                          "command again to resume them", soft_wrap=True)
    finally:
        if started_ray:
            ray.shutdown()


def _collect(ref: Any, trial: Trial, manifest: Manifest, sweep_dir: Path, display: _Display,
             result: SweepResult) -> None:
    rec = manifest.trials[trial.id]
    try:
        out = ray.get(ref)
    except RayTaskError as exc:
        _fail(rec, _error_line(exc), str(exc))
        result.failed.append(trial.id)
        display.event(f"[red]failed[/] {escape(trial.id)}: {escape(rec.error)}")
    except RayError as exc:  # the worker or node died more often than --max-retries
        _lose(rec, trial, f"its Ray worker or node died ({_first_line(exc)})", str(exc))
        result.failed.append(trial.id)
        display.event(f"[red]lost[/] {escape(trial.id)}: {escape(rec.error)}")
    else:
        rec.status, rec.updated = "finished", time.time()
        for key in ("env_steps", "eval_return", "resumed_from", "node"):
            setattr(rec, key, out[key])
        (result.skipped if out["status"] == "skipped" else result.ran).append(trial.id)
        resumed = f" (resumed from step {out['resumed_from']})" if out["resumed_from"] is not None else ""
        display.event(f"[green]finished[/] {escape(trial.id)}: {out['env_steps']} steps, eval return "
                      f"{_fmt(out['eval_return'])}{resumed}")
        if not (sweep_dir / rec.run / CHECKPOINT).exists():
            display.event(f"[yellow]warning[/]: {sweep_dir / rec.run} is not visible here; put the sweep folder on a "
                          "filesystem shared by all nodes, or resumes and `resel report` will not see the runs")
    manifest.save(sweep_dir)


def _error_line(exc: RayTaskError) -> str:
    """``Type: message`` of the exception the trial raised (the traceback goes to the manifest)."""
    cause = exc.cause
    if cause is None or isinstance(cause, RayError):  # not deserialisable here: the traceback's last line
        return str(exc).strip().splitlines()[-1]
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class _Display:
    """A live table on a terminal; otherwise event lines and a status block every ``every_s`` seconds."""

    def __init__(self, console: Console, manifest: Manifest, ids: list[str], every_s: float) -> None:
        self.console, self.manifest, self.ids, self.every_s = console, manifest, ids, every_s
        self.rows: dict[str, dict[str, Any]] = {}
        self.live = Live(self._table(), console=console, refresh_per_second=1) if console.is_terminal else None
        self.last_print = time.monotonic()

    def __enter__(self) -> _Display:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def event(self, message: str) -> None:
        self.console.print(message)

    def update(self, rows: dict[str, dict[str, Any]]) -> bool:
        """Take the trials' latest progress; returns whether a trial started running (manifest changed)."""
        self.rows = rows
        changed = False
        for trial_id, row in rows.items():
            rec = self.manifest.trials.get(trial_id)
            if rec is None or rec.status in ("finished", "failed", "lost"):
                continue
            changed |= rec.status != "running"
            rec.status, rec.env_steps, rec.node = "running", row["env_steps"], row["node"]
            rec.resumed_from = row["resumed_from"]
        if self.live:
            self.live.update(self._table())
        elif time.monotonic() - self.last_print >= self.every_s:
            self.last_print = time.monotonic()
            for trial_id in self.ids:
                rec = self.manifest.trials[trial_id]
                if rec.status in ("running", "pending"):
                    self.console.print(f"  {trial_id}: {rec.status} {rec.env_steps}/{rec.target_steps} steps, "
                                       f"eval {_fmt(self.rows.get(trial_id, {}).get('eval_return'))}", markup=False,
                                       highlight=False)
        return changed

    def _table(self) -> Table:
        table = Table("trial", "status", "steps", "eval return", "steps/s", "node")
        for trial_id in self.ids:
            rec, row = self.manifest.trials[trial_id], self.rows.get(trial_id, {})
            rate = row.get("steps_per_s") if rec.status == "running" else None
            table.add_row(trial_id, rec.status, f"{rec.env_steps}/{rec.target_steps}",
                          _fmt(rec.eval_return if rec.status == "finished" else row.get("eval_return")),
                          "-" if not rate else f"{rate:.0f}", rec.node or "")
        return table


def _print_summary(manifest: Manifest, ids: list[str], console: Console) -> None:
    counts: dict[str, int] = {}
    for trial_id in ids:
        counts[manifest.trials[trial_id].status] = counts.get(manifest.trials[trial_id].status, 0) + 1
    console.print("trials: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for trial_id in ids:
        rec = manifest.trials[trial_id]
        if rec.status in ("failed", "lost"):
            console.print(f"  [red]{rec.status}[/] {escape(trial_id)}: {escape(rec.error or '')}")
