"""What a person watches of a training run: the progress bar and its status line, the rows of metrics.csv
and TensorBoard, and the run's wall clock (summed over every process that trained it)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from resel_train.evaluator import EvalResult
from resel_train.logger import RunLogger


class Monitor:
    """One ``train`` call as a person follows it: rows to metrics.csv and TensorBoard (``logger``), and a rich
    progress bar from ``completed`` to ``total`` steps with a status line (``enabled=False``: no bar)."""

    def __init__(self, logger: RunLogger, clock: RunClock, title: str, total: int, completed: int,
                 enabled: bool) -> None:
        self.logger, self.clock = logger, clock
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), disable=not enabled, transient=False,
        )
        self._task = self._progress.add_task(title, total=total, completed=completed, status="")

    def __enter__(self) -> Monitor:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)
        self.logger.close()

    def log(self, step: int, episodes: int, recent_returns: Sequence[float], last_evaluation: EvalResult | None,
            metrics: dict[str, float]) -> None:
        """Write the row of ``step`` (with the evaluation if it is that step's) and show its status."""
        rate = self.clock.rate(step)
        own = last_evaluation if last_evaluation is not None and last_evaluation.step == step else None
        self.logger.log(metrics_row(step, self.clock.seconds, rate, episodes, recent_returns, own, metrics))
        self._progress.update(self._task, status=status_line(rate, recent_returns, last_evaluation))

    def advance_to(self, step: int) -> None:
        """Show ``step`` steps done."""
        self._progress.update(self._task, completed=step)


def status_line(rate: float, recent_returns: Sequence[float], evaluation: EvalResult | None) -> str:
    """Steps/s, the mean return of the recent training episodes and the last evaluation (with its success rate)."""
    train = f"{np.mean(recent_returns):.1f}" if recent_returns else "-"
    evalr = f"{evaluation.mean_return:.1f}" if evaluation is not None else "-"
    rate_ok = evaluation is not None and evaluation.success_rate is not None
    success = f"  success {evaluation.success_rate:.0%}" if rate_ok else ""
    return f"{rate:.0f} steps/s  train {train}  eval {evalr}{success}"


def metrics_row(step: int, wall_s: float, rate: float, episodes: int, recent_returns: Sequence[float],
                evaluation: EvalResult | None, metrics: dict[str, float]) -> dict[str, float | None]:
    """One row of metrics.csv; ``evaluation``: the step's own evaluation, or None (its columns stay blank)."""
    done = evaluation is not None
    return {"step": step, "wall_s": round(wall_s, 2), "steps_per_s": rate, "episodes": episodes,
            "train_return": float(np.mean(recent_returns)) if recent_returns else None,
            "eval_return": evaluation.mean_return if done else None,
            "eval_return_std": evaluation.std_return if done else None,
            "eval_success_rate": evaluation.success_rate if done else None, **metrics}


class RunClock:
    """Seconds of training over every process of a run, and the steps/s of the current ``train`` call."""

    def __init__(self) -> None:
        self.earlier = 0.0  # seconds of earlier train() calls and processes
        self._start: float | None = None
        self._start_step = 0

    def start(self, step: int) -> None:
        """A ``train`` call starts at env step ``step``."""
        self._start, self._start_step = time.perf_counter(), step

    def stop(self) -> None:
        """The ``train`` call ended: its seconds join the earlier ones."""
        self.earlier, self._start = self.seconds, None

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of training so far (continues across resumes)."""
        return self.earlier + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def rate(self, step: int) -> float:
        """Env steps per second since :meth:`start`."""
        return (step - self._start_step) / (time.perf_counter() - self._start)
