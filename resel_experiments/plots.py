"""The one learning-curve plot: mean over runs with a ± standard-error band, on the steps every run reached.

`resel plot` (any metric of any run folders) and `resel report` (eval return per task and encoder) both
draw through :func:`plot_curves`, so every figure of the toolkit shows the same statistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from resel_experiments.metrics import latest_rows, read_metrics

Curve = tuple[Sequence[float], Sequence[float]]  # (steps, values) of one run


def mean_and_se(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(steps, mean, standard error or None for one run) on the steps every run reached.

    Each run contributes at step s its last value at or before s, so runs logged at different steps still
    line up; steps past the shortest run are left out.
    """
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        return np.array([]), np.array([]), None
    reach, start = min(x[-1] for x, _ in curves), max(x[0] for x, _ in curves)
    grid = np.array(sorted({s for x, _ in curves for s in x if start <= s <= reach}))
    values = np.stack([y[np.searchsorted(x, grid, side="right") - 1] for x, y in curves])
    se = values.std(0, ddof=1) / math.sqrt(len(curves)) if len(curves) > 1 else None
    return grid, values.mean(0), se


def plot_curves(groups: Mapping[str, Sequence[Curve]], out: str | Path, ylabel: str, title: str = "",
                reference: tuple[float, str] | None = None) -> Path:
    """One line per group (label -> its runs' curves), ± s.e. shaded; ``reference`` a labelled horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, curves in groups.items():
        steps, mean, se = mean_and_se(curves)
        if not len(steps):
            continue
        ax.plot(steps, mean, label=f"{label} (n={len([c for c in curves if len(c[0])])})")
        if se is not None:
            ax.fill_between(steps, mean - se, mean + se, alpha=0.2)
    if reference is not None:
        ax.axhline(reference[0], color="k", ls="--", lw=1, label=reference[1])
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"{ylabel} (mean ± s.e. over runs)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_runs(groups: Mapping[str, Sequence[str | Path]], out: str | Path, metric: str = "eval_return",
              title: str = "") -> Path:
    """:func:`plot_curves` of ``metric`` read from run folders (label -> its run folders)."""
    tables = {run: latest_rows(read_metrics(run)) for runs in groups.values() for run in runs}
    if not any(metric in row for rows in tables.values() for row in rows):
        present = sorted({k for rows in tables.values() for row in rows for k in row})
        raise ValueError(f"no run has values for metric {metric!r}; columns with values: {', '.join(present)}")
    curves = {label: [([r["step"] for r in tables[run] if metric in r], [r[metric] for r in tables[run] if metric in r])
                      for run in runs] for label, runs in groups.items()}
    return plot_curves(curves, out, metric.replace("_", " "), title)
