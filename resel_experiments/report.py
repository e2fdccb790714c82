"""`resel report`: a sweep's results as mean +- standard error over seeds, beside the paper's numbers.

The metric is the evaluation return by default; any logged evaluation column can be reported instead
(``--metric eval_success_rate`` for Key-to-Door).

Every run folder under the sweep folder describes itself (config.yaml, metrics.csv), so the report
needs no Ray and also works on a folder of plain `resel train` runs. Finished and still-running runs
both count; a run contributes at step S once it has logged past S, with its last evaluation at or
below S. A run folder that cannot be used (unreadable config.yaml or metrics.csv, nothing logged yet, a
duplicate seed) is skipped and listed with the reason, so every mean covers exactly the seeds it says.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from resel_experiments.metrics import latest_rows, read_metrics
from resel_experiments.paper_results import PAPER_RESULTS
from resel_experiments.plots import plot_curves
from resel_experiments.sweep import Manifest


@dataclass
class RunCurve:
    env: str
    encoder: str
    seed: int
    target_steps: int
    last_step: int  # last logged environment step
    steps: np.ndarray  # evaluation steps
    values: np.ndarray  # the reported metric at those steps
    folder: str = ""  # the run folder's name inside the sweep folder

    @property
    def finished(self) -> bool:
        """Whether the run logged its target step."""
        return self.last_step >= self.target_steps

    def value_at(self, step: int) -> float | None:
        """The last evaluation at or below ``step``, once the run has got that far."""
        if self.last_step < step or not len(self.steps) or self.steps[0] > step:
            return None
        return float(self.values[np.searchsorted(self.steps, step, side="right") - 1])


@dataclass
class Cell:
    n: int
    mean: float
    se: float | None  # None with a single seed


@dataclass
class Report:
    runs: list[RunCurve]
    steps: list[int]
    cells: dict[tuple[str, str, int], Cell]  # (env, encoder, step) -> cell
    markdown: Path
    csv: Path
    plots: list[Path] = field(default_factory=list)
    failed: int = 0  # trials the manifest lists as failed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run folder, why it was not used)
    metric: str = "eval_return"  # the logged column the cells and curves show

    @property
    def finished(self) -> int:
        """Runs that reached their target step."""
        return sum(r.finished for r in self.runs)


class RunSkipped(ValueError):
    """A run folder the report cannot use; the message says why (the report lists it, it does not stop)."""


def parse_steps(text: str) -> list[int]:
    """``--steps`` of `resel report`: positive whole step counts, comma-separated (``1e5`` allowed)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--steps {text!r} names no step count; give positive whole numbers, e.g. --steps 10000,50000")
    steps = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 1 and value == int(value)):
            raise ValueError(f"--steps: {item!r} is not a step count; give positive whole numbers, comma-separated, "
                             "e.g. --steps 10000,50000")
        steps.append(int(value))
    return steps


def load_run(run_dir: Path, metric: str = "eval_return") -> RunCurve:
    """A run folder's curve of ``metric``, or :class:`RunSkipped` saying why it cannot be used."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        env, encoder, seed, target = cfg["env"], cfg["model"]["encoder"], int(cfg["seed"]), int(cfg["steps"])
        if not (isinstance(env, str) and isinstance(encoder, str)):
            raise TypeError("env and model.encoder must be names")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise RunSkipped(f"config.yaml is not a run's config ({_reason(exc)})") from None
    try:
        rows = latest_rows(read_metrics(run_dir))
    except FileNotFoundError:
        raise RunSkipped("nothing logged yet (no metrics.csv)") from None
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise RunSkipped(f"metrics.csv is unreadable ({_reason(exc)})") from None
    if not rows:
        raise RunSkipped("nothing logged yet (metrics.csv has no rows)")
    evals = [r for r in rows if metric in r]
    return RunCurve(env, encoder, seed, target, int(rows[-1]["step"]),
                    np.array([int(r["step"]) for r in evals]), np.array([r[metric] for r in evals]))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:120]


def find_runs(sweep_dir: Path, manifest: Manifest | None = None, metric: str = "eval_return"
              ) -> tuple[list[RunCurve], list[tuple[str, str]]]:
    """The usable runs under ``sweep_dir`` and (folder name, reason) for every one skipped.

    A run folder is a folder with a config.yaml. Trials that ``manifest`` (the sweep's, if any) lists without
    such a folder are skipped as not started, and a second folder with another's task, encoder and seed as a
    duplicate.
    """
    sweep_dir = Path(sweep_dir)
    runs: dict[tuple[str, str, int], RunCurve] = {}
    skipped: list[tuple[str, str]] = []
    folders = sorted(p.parent for p in sweep_dir.glob("*/config.yaml"))
    for folder in folders:
        try:
            run = load_run(folder, metric)
        except RunSkipped as exc:
            skipped.append((folder.name, str(exc)))
            continue
        key = (run.env, run.encoder, run.seed)
        if key in runs:
            skipped.append((folder.name, f"same task, encoder and seed as {runs[key].folder}"))
            continue
        run.folder = folder.name
        runs[key] = run
    seen = {f.name for f in folders}
    for rec in (manifest.trials.values() if manifest else ()):
        if rec.run not in seen:
            skipped.append((rec.run, f"not started (the sweep lists it as {rec.status})"))
    return sorted(runs.values(), key=lambda r: (r.env, r.encoder, r.seed)), skipped


def aggregate(runs: list[RunCurve], steps: list[int]) -> dict[tuple[str, str, int], Cell]:
    """Mean ± standard error over seeds per (task, encoder, step), from the seeds that reached the step."""
    cells = {}
    for (env, encoder), members in _groups(runs).items():
        for step in steps:
            values = [v for v in (r.value_at(step) for r in members) if v is not None]
            if values:
                se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
                cells[(env, encoder, step)] = Cell(len(values), float(np.mean(values)), se)
    return cells


def write_report(sweep_dir: str | Path, steps: list[int] | None = None, out: str | Path | None = None,
                 metric: str = "eval_return") -> Report:
    """Write report.md, report.csv and one <task>.png per task into ``out`` (default SWEEP_DIR/report)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep folder {sweep_dir}; give the folder `resel sweep --out` wrote (or a folder of "
                                "`resel train` run folders)")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for report.md, report.csv and the plots")
    manifest = Manifest.load(sweep_dir)
    runs, skipped = find_runs(sweep_dir, manifest, metric)
    if not runs:
        why = "; ".join(f"{name}: {reason}" for name, reason in skipped[:5]) or "no */config.yaml"
        raise FileNotFoundError(f"no usable run in {sweep_dir} ({why}); point resel report at a sweep folder or a "
                                "folder of `resel train` run folders")
    steps = sorted(set(steps or (r.target_steps for r in runs)))
    out = Path(out) if out is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    failed = sum(rec.status == "failed" for rec in manifest.trials.values()) if manifest else 0
    cells = aggregate(runs, steps)
    report = Report(runs, steps, cells, out / "report.md", out / "report.csv", failed=failed, skipped=skipped,
                    metric=metric)
    _write_csv(report)
    _write_markdown(report, sweep_dir)
    for env in sorted({r.env for r in runs}):
        report.plots.append(plot_task(env, [r for r in runs if r.env == env], out / f"{env}.png", metric))
    return report


def _groups(runs: list[RunCurve]) -> dict[tuple[str, str], list[RunCurve]]:
    groups: dict[tuple[str, str], list[RunCurve]] = {}
    for run in runs:
        groups.setdefault((run.env, run.encoder), []).append(run)
    return groups


def _write_csv(report: Report) -> None:
    with report.csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "encoder", "step", "n", "mean", "se", "runs", "finished", "paper_resel",
                         "paper_steps"])
        for (env, encoder), members in _groups(report.runs).items():
            paper = PAPER_RESULTS.get(env) if report.metric == "eval_return" else None
            for step in report.steps:
                cell = report.cells.get((env, encoder, step))
                writer.writerow([env, encoder, step, cell.n if cell else 0, cell.mean if cell else "",
                                 "" if cell is None or cell.se is None else cell.se, len(members),
                                 sum(r.finished for r in members), paper.resel if paper else "",
                                 paper.steps if paper else ""])


def _fmt_cell(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    spread = f" ± {cell.se:.1f}" if cell.se is not None else ""
    return f"{cell.mean:.1f}{spread} (n={cell.n})"


def _fmt_steps(steps: int) -> str:
    return f"{steps / 1e6:g}M" if steps >= 1_000_000 else f"{steps / 1e3:g}k" if steps >= 1000 else str(steps)


def markdown_table(report: Report) -> str:
    """The results table: one row per task and encoder, one column per step, then the paper's number."""
    lines = [
        "| task | encoder | runs | " + " | ".join(f"step {_fmt_steps(s)}" for s in report.steps) + " | paper (RESeL) |",
        "|---|---|---|" + "---|" * len(report.steps) + "---|",
    ]
    for (env, encoder), members in _groups(report.runs).items():
        paper = PAPER_RESULTS.get(env) if report.metric == "eval_return" else None
        cells = " | ".join(_fmt_cell(report.cells.get((env, encoder, s))) for s in report.steps)
        ref = f"{paper.resel:g} @ {_fmt_steps(paper.steps)}" if paper else "-"
        lines.append(f"| {env} | {encoder} | {len(members)} ({sum(r.finished for r in members)} finished) | {cells} "
                     f"| {ref} |")
    return "\n".join(lines)


def _write_markdown(report: Report, sweep_dir: Path) -> None:
    runs, envs = report.runs, sorted({r.env for r in report.runs})
    failed = f"; {report.failed} failed trials" if report.failed else ""
    report.markdown.write_text("\n".join([
        f"# Sweep report: {sweep_dir.resolve()}", "",
        f"{len(runs)} runs ({report.finished} finished, {len(runs) - report.finished} running) over {len(envs)} "
        f"tasks{failed}.",
        *([f"Skipped {len(report.skipped)} run folders (not in any cell):", "",
           *(f"- {name}: {reason}" for name, reason in report.skipped), ""] if report.skipped else []),
        f"Cells: mean ± standard error of {report.metric} over seeds (n seeds) at each step (the last evaluation at "
        "or below it). Paper: RESeL's final return at the paper's step budget.", "",
        markdown_table(report), "",
        "Learning curves: " + ", ".join(f"[{e}]({e}.png)" for e in envs), "",
    ]))


def plot_task(env: str, runs: list[RunCurve], out: Path, metric: str = "eval_return") -> Path:
    """One line per encoder: the metric's mean over seeds, ± standard error (with the paper's return)."""
    groups = {encoder: [(r.steps, r.values) for r in members] for (_, encoder), members in sorted(_groups(runs).items())}
    paper = PAPER_RESULTS.get(env) if metric == "eval_return" else None
    reference = (paper.resel, f"paper RESeL @ {_fmt_steps(paper.steps)}") if paper else None
    return plot_curves(groups, out, metric.replace("_", " "), env, reference)
