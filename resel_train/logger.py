"""Run logs a person can read: a CSV of every logged row plus TensorBoard events (and, with
``logger.wandb=true``, Weights & Biases), and PNG curves."""

from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from resel_deploy.extras import install_hint
from resel_train.persist.atomic import atomic_write

COLUMNS = (
    "step", "wall_s", "steps_per_s", "episodes", "train_return", "eval_return", "eval_return_std",
    "eval_success_rate", "critic_loss", "q_mean", "policy_loss", "entropy", "alpha", "critic_grad_norm",
    "policy_grad_norm",
)
# TensorBoard groups (the CSV keeps the plain names): losses, evaluation, throughput; the rest is train/.
_TB_GROUPS = {"critic_loss": "losses", "policy_loss": "losses", "wall_s": "time", "steps_per_s": "time"}


def tb_tag(key: str) -> str:
    """The grouped TensorBoard tag of a metric: ``losses/critic_loss``, ``eval/return``, ``train/alpha``."""
    if key.startswith("eval_"):
        return "eval/" + key.removeprefix("eval_")
    return f"{_TB_GROUPS.get(key, 'train')}/{key}"


def flat_hparams(config: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """A nested config as TensorBoard hparams: ``{"algo.batch_size": 2000, ...}`` (None as "None")."""
    flat: dict[str, float | int | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class RunLogger:
    """Appends rows to ``metrics.csv`` (fixed columns, blank when absent) and mirrors them to TensorBoard.

    ``start_step``: the step the run (re)starts from. Rows after it -- logged by a process that was
    stopped before its next checkpoint -- are cut first (an atomic rewrite), and TensorBoard purges
    its events after it, so a resumed run logs each step exactly once. With ``logger.wandb`` in
    ``config`` the rows also go to Weights & Biases, under the same tags as TensorBoard, in a W&B run
    named after the run folder (resumed with it; W&B keeps the first copy of a step logged twice).
    """

    def __init__(self, run_dir: Path, start_step: int = 0, config: dict | None = None) -> None:
        self.csv_path = run_dir / "metrics.csv"
        cut_metrics(self.csv_path, start_step)
        self._file = self.csv_path.open("a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        self._tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start_step + 1)
        if config is not None:  # the resolved config in TensorBoard's HParams tab, beside the eval return
            for summary in hparams(flat_hparams(config), {tb_tag("eval_return"): float("nan")}):
                self._tb.file_writer.add_summary(summary)
        self._wandb = open_wandb(run_dir, config) if (config or {}).get("logger", {}).get("wandb") else None

    def log(self, row: dict) -> None:
        """Write one row; values may be floats, ints, None or 0-d tensors (read here, once per row)."""
        row = {k: (None if v is None else float(v)) for k, v in row.items()}
        self._csv.writerow({k: ("" if row.get(k) is None else _cell(k, row[k])) for k in COLUMNS})
        self._file.flush()
        scalars = {tb_tag(k): v for k, v in row.items() if k != "step" and v is not None}
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, value, int(row["step"]))
        if self._wandb is not None:
            self._wandb.log(scalars, step=int(row["step"]))

    def close(self) -> None:
        """Flush and close the CSV and TensorBoard writers."""
        self._file.close()
        self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def open_wandb(run_dir: Path, config: dict[str, Any]) -> Any:
    """A W&B run for ``run_dir``: named after the folder, with an id derived from its absolute path so
    that a resume continues the same W&B run; its files go to ``run_dir/wandb``. Errors are one line."""
    try:
        import wandb
    except ImportError:
        raise ImportError(f"logger.wandb=true needs wandb: {install_hint('wandb')}") from None
    key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]
    try:
        return wandb.init(project=config["logger"]["wandb_project"], name=run_dir.name, id=f"{run_dir.name}-{key}",
                          resume="allow", dir=str(run_dir), config=config, reinit="finish_previous")
    except Exception as exc:  # noqa: BLE001  (wandb raises its own types: not logged in, no network, ...)
        raise RuntimeError(f"logger.wandb: wandb.init failed ({' '.join(str(exc).split())}); run `wandb login`, "
                           "or set WANDB_MODE=offline to keep the W&B log in the run folder") from None


def _cell(key: str, value: float) -> float | int:
    return int(value) if key in ("step", "episodes") else value


def cut_metrics(path: Path, last_step: int) -> None:
    """Rewrite ``path`` with the header and only the complete rows up to ``last_step`` (atomically)."""
    kept = []
    if path.exists():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = float(row.get("step") or "nan")
                except ValueError:
                    continue
                if math.isfinite(step) and step <= last_step and None not in row.values():
                    kept.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write(path, buf.getvalue().encode())
