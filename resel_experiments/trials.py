"""One trial's body, run on a Ray worker: decide finished / resume / fresh from its run folder, then train.

The torch side of a sweep (the driver and the report need none of it).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resel_train.config import config_from_dict, run_dir_for
from resel_train.persist.checkpoint import CHECKPOINT, load_checkpoint, remove_unreferenced
from resel_train.trainer import Trainer


@dataclass(frozen=True)
class TrialState:
    kind: str  # finished | resume | fresh
    env_steps: int


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
        last = trainer.last_evaluation
        return {**base, "env_steps": trainer.env_steps, "eval_return": None if last is None else last.mean_return,
                "steps_per_s": rate}

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
