"""`resel sweep` on a real local Ray instance (2 CPUs) and `resel report` on what it wrote.

One sweep of 2 tasks x 2 seeds is SIGKILLed (driver, Ray and trials: the whole process group) after
a trial's first checkpoint, then started again: the killed trial must resume from that checkpoint,
all four must finish, the report must count them, and a third start must skip them all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resel.cli.main import app
from resel_deploy.extras import install_hint
from resel_experiments.report import markdown_table, write_report
from resel_experiments.sweep import SweepGrid, plan_trials
from resel_train.persist.checkpoint import CheckpointError, load_checkpoint
from tests.test_cli import TINY

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray not installed: pip install -e ".[ray]"')

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
STEPS = 1000  # 200 random warm-up steps, then ~800 updates: long enough that a trial cannot finish between
# its first checkpoint and the kill, even when a Ray worker outlives the group for a moment; checkpoints every 100
SWEEP = ["sweep", "--envs", "Pendulum-V,CartPole-V", "--seeds", "2", "--steps", str(STEPS), "--num-cpus", "2",
         *TINY, "--set", "eval_every=100", "--set", "checkpoint_every=100", "--set", "log_every=100"]
RUNS = ["Pendulum-V_mamba_s0", "Pendulum-V_mamba_s1", "CartPole-V_mamba_s0", "CartPole-V_mamba_s1"]


def invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


def checkpoint_steps(run_dir: Path) -> int:
    try:
        return int(load_checkpoint(run_dir / "checkpoint.pt")["counters"]["env_steps"])
    except (FileNotFoundError, CheckpointError):
        return 0


def kill_after_first_checkpoint(out: Path, run: str) -> int:
    """Start the sweep in its own process group; SIGKILL the group once ``run`` has a checkpoint."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    log = (out.parent / "killed_sweep.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "resel.cli.main", *SWEEP, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while checkpoint_steps(out / run) == 0:
            assert proc.poll() is None, (out.parent / "killed_sweep.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 150 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    for _ in range(100):  # Ray's agents go with the group; wait until none is left
        if subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    wait_until_unlocked(out / run)  # a Ray worker outside the group can finish a save before it goes
    return checkpoint_steps(out / run)


def wait_until_unlocked(run_dir: Path, timeout: float = 60.0) -> None:
    """Return once no process holds the run folder's lock (the trial's process is gone)."""
    import fcntl

    deadline = time.monotonic() + timeout
    with (run_dir / "run.lock").open("a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{run_dir} still locked {timeout} s after the kill"
                time.sleep(0.1)


@needs_ray
def test_sweep_kill_resume_report_skip(tmp_path):
    out = tmp_path / "sweep"
    killed_at = kill_after_first_checkpoint(out, "Pendulum-V_mamba_s0")
    assert 0 < killed_at < STEPS

    start = time.monotonic()
    text = invoke(*SWEEP, "--out", str(out))
    assert "4 trials, 4 selected, 0 already finished, 4 to run" in text
    assert f"finished Pendulum-V/mamba/0: {STEPS} steps" in text and f"resumed from step {killed_at}" in text
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["trials"]["Pendulum-V/mamba/0"]["resumed_from"] == killed_at
    assert manifest["trials"]["Pendulum-V/mamba/0"]["attempts"] == 2
    assert {t["status"] for t in manifest["trials"].values()} == {"finished"}
    for run in RUNS:
        assert checkpoint_steps(out / run) == STEPS
        assert (out / run / "config.yaml").exists() and any((out / run / "tb").iterdir())
        steps = [int(line.split(",")[0]) for line in (out / run / "metrics.csv").read_text().splitlines()[1:]]
        assert steps[-1] == STEPS
    print(f"restarted sweep: {time.monotonic() - start:.1f} s")

    text = invoke("report", str(out), "--steps", "300,600")
    assert "4 runs (4 finished) over 2 tasks" in text
    md = (out / "report" / "report.md").read_text()
    assert "| Pendulum-V | mamba | 2 (2 finished) |" in md and "(n=2)" in md and "step 600" in md
    rows = (out / "report" / "report.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 and all(",2,2," in r for r in rows[1:])  # n=2 seeds, 2 runs, 2 finished
    for env in ("Pendulum-V", "CartPole-V"):
        assert (out / "report" / f"{env}.png").read_bytes()[:4] == b"\x89PNG"

    mtimes = {run: (out / run / "checkpoint.pt").stat().st_mtime_ns for run in RUNS}
    text = invoke("sweep", "--out", str(out))  # the grid comes from the manifest
    assert "4 trials, 4 selected, 4 already finished, 0 to run" in text
    assert mtimes == {run: (out / run / "checkpoint.pt").stat().st_mtime_ns for run in RUNS}


@needs_ray
def test_failed_trial_is_listed_and_retried_alone(tmp_path):
    out = tmp_path / "sweep"
    base = ["sweep", "--out", str(out), "--envs", "Pendulum-V", "--seeds", "2", "--steps", "220", "--num-cpus", "2",
            *TINY]
    invoke(*base, "--only", "Pendulum-V/mamba/0")
    (out / "Pendulum-V_mamba_s1").mkdir()
    (out / "Pendulum-V_mamba_s1" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    text = invoke(*base, code=1)
    assert "1 failed; rerun them alone" in text and "failed Pendulum-V/mamba/1: CheckpointError" in text
    assert "1 already finished, 0 to run" in text
    (out / "Pendulum-V_mamba_s1" / "checkpoint.pt").unlink()
    text = invoke("sweep", "--out", str(out), "--retry-failed", "--num-cpus", "2")
    assert "2 trials, 1 selected, 0 already finished, 1 to run" in text and "finished Pendulum-V/mamba/1" in text
    text = invoke("sweep", "--out", str(out), "--only", "Pendulum-V/mamba/9", code=2)
    assert "is not a trial of this sweep" in text


@needs_ray
def test_worker_error_is_reported(tmp_path):
    out = tmp_path / "sweep"
    text = invoke("sweep", "--out", str(out), "--envs", "Pendulum-V", "--seeds", "1", "--steps", "220",
                  "--num-cpus", "2", "--encoders", "mlp", *TINY, "--set", "replay_capacity=-1", code=1)
    trial = json.loads((out / "sweep.json").read_text())["trials"]["Pendulum-V/mlp/0"]
    assert trial["status"] == "failed" and trial["error"] and trial["error"] in text and trial["traceback"]


def test_sweep_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    monkeypatch.delitem(sys.modules, "resel_experiments.runner", raising=False)
    text = invoke("sweep", "--envs", "Pendulum-V", "--seeds", "1", code=2)
    assert install_hint("ray") in text


def test_trial_threads_follow_cpus_per_trial(tmp_path):
    grid = SweepGrid(["Pendulum-V"], 1)
    assert [plan_trials(grid, tmp_path, c)[0].config.threads for c in (0.5, 1, 2, 3.5)] == [1, 1, 2, 3]
    with pytest.raises(ValueError, match="cpus-per-trial"):
        plan_trials(grid, tmp_path, 0)


def test_report_keeps_the_rows_logged_after_a_resume(tmp_path):
    """Two seeds; seed 1 was resumed from step 200 after logging up to 300, so its first 300 row is stale."""
    logs = {0: [(100, -900), (200, -800), (300, -700), (400, -600)],
            1: [(100, -1000), (200, -900), (300, -5000), (200, -900), (300, -500), (400, -400)]}
    for seed, rows in logs.items():
        run = tmp_path / f"Hopper_mamba_s{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(f"env: Hopper\nseed: {seed}\nsteps: 400\nmodel: {{encoder: mamba}}\n")
        (run / "metrics.csv").write_text("step,eval_return\n" + "".join(f"{s},{r}\n" for s, r in rows))
    report = write_report(tmp_path, [250, 300, 1000])
    assert report.finished == 2
    assert report.cells[("Hopper", "mamba", 250)].mean == pytest.approx(-850)  # last eval at or below 250
    cell = report.cells[("Hopper", "mamba", 300)]
    assert (cell.n, cell.mean, cell.se) == (2, pytest.approx(-600), pytest.approx(100))  # not the stale -5000
    assert ("Hopper", "mamba", 1000) not in report.cells  # no run got that far
    assert "4400 @ 5M" in markdown_table(report)


@needs_ray
def test_sweep_runs_the_lstm_and_s5_encoders(tmp_path):
    out = tmp_path / "sweep"
    text = invoke("sweep", "--out", str(out), "--envs", "Pendulum-V", "--seeds", "1", "--steps", "220",
                  "--num-cpus", "2", "--encoders", "lstm,s5", *TINY)
    assert "finished Pendulum-V/lstm/0" in text and "finished Pendulum-V/s5/0" in text
    for encoder in ("lstm", "s5"):
        data = load_checkpoint(out / f"Pendulum-V_{encoder}_s0" / "checkpoint.pt")
        assert data["model"]["encoder"] == encoder and data["counters"]["env_steps"] == 220
