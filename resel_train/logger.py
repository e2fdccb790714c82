"""Run logs a person can read: a CSV of every logged row plus TensorBoard events, and PNG curves."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

COLUMNS = (
    "step", "wall_s", "steps_per_s", "episodes", "train_return", "eval_return", "eval_return_std",
    "eval_success_rate", "critic_loss", "q_mean", "policy_loss", "entropy", "alpha",
)


class RunLogger:
    """Appends rows to ``metrics.csv`` (fixed columns, blank when absent) and mirrors them to TensorBoard."""

    def __init__(self, run_dir: Path) -> None:
        self.csv_path = run_dir / "metrics.csv"
        new = not self.csv_path.exists()
        self._file = self.csv_path.open("a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log(self, row: dict[str, float]) -> None:
        self._csv.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
        self._file.flush()
        for key, value in row.items():
            if key != "step" and value is not None:
                self._tb.add_scalar(key, value, int(row["step"]))

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Rows of a run's metrics.csv with numbers parsed (blank cells dropped)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.csv in {run_dir}: is it a `resel train` run folder?")
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def plot_learning_curves(
    groups: dict[str, list[str | Path]], out: str | Path, metric: str = "eval_return", title: str = ""
) -> Path:
    """One line per group (mean over its runs, shaded min-max), x = environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, runs in groups.items():
        curves = []
        for run in runs:
            rows = [r for r in read_metrics(run) if metric in r]
            curves.append((np.array([r["step"] for r in rows]), np.array([r[metric] for r in rows])))
        length = min(len(x) for x, _ in curves)
        if length == 0:
            continue
        steps = curves[0][0][:length]
        values = np.stack([y[:length] for _, y in curves])
        ax.plot(steps, values.mean(0), label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
