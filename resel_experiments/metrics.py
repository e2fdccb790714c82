"""Reading a run folder's metrics.csv (torch-free: the report, the plots and the benchmarks read runs here)."""

from __future__ import annotations

import csv
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Rows of a run's metrics.csv with numbers parsed (blank cells dropped)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.csv in {run_dir}: is it a `resel train` run folder?")
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def latest_rows(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Drop rows a resumed run logged again: after a restart from an earlier checkpoint the later rows win."""
    if any("step" not in row for row in rows):
        raise ValueError("a row has no step")
    kept: list[dict[str, float]] = []
    for row in rows:
        while kept and kept[-1]["step"] >= row["step"]:
            kept.pop()
        kept.append(row)
    return kept
