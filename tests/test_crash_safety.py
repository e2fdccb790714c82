"""Runs that survive anything: SIGKILL inside every write of a save, SIGINT/SIGTERM, the run lock,
the divergence guard, corrupted bytes and file modes. Training runs in real subprocesses of the CLI."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resel_train.persist import crashpoint
from resel_train.persist.atomic import atomic_write
from resel_train.persist.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, verify_checkpoint
from resel_train.persist.runlock import RunLock, RunLocked

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.mamba.d_state=4", "--set", "model.mamba.d_conv=4", "--set", "model.embed=16",
        "--set", "model.hidden=16",
        "--set", "model.mamba.dt_rank=2", "--set", "algo.batch_size=32", "--set", "warmup_steps=200",
        "--set", "eval_episodes=1", "--set", "eval_every=1000000", "--set", "threads=1",
        "--set", "log_every=10", "--set", "checkpoint_every=50"]
EVERY = 50  # checkpoint_every above


def env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def train(out: Path, steps: int, *extra: str, crash_at: str | None = None) -> subprocess.Popen:
    """`resel train` in a subprocess; ``crash_at``: through tests/crash_hook.py, which SIGKILLs it at that point."""
    cli = [str(ROOT / "tests" / "crash_hook.py"), crash_at] if crash_at else ["-m", "resel.cli.main"]
    cmd = [sys.executable, *cli, "train", "--env", "Pendulum-V", "--steps", str(steps), "--out", str(out),
           "--no-progress", *TINY, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logged_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def saved_step(run: Path) -> int:
    return int(load_checkpoint(run / "checkpoint.pt")["counters"]["env_steps"])


def wait_for_step(proc: subprocess.Popen, run: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if (run / "metrics.csv").exists() and any(s >= step for s in logged_steps(run)):
            return
        time.sleep(0.05)
    raise AssertionError(f"run did not reach step {step}")


def test_the_crash_seam_is_a_hook_that_tests_install(tmp_path, monkeypatch):
    seen: list[str] = []
    previous = crashpoint.install(seen.append)
    try:
        atomic_write(tmp_path / "f.bin", b"x")
    finally:
        assert crashpoint.install(previous) == seen.append
    assert seen == ["f.bin:partial", "f.bin:synced", "f.bin:renamed"]
    monkeypatch.setenv("RESEL_CRASH_AT", "g.bin:synced")  # the old environment switch reaches no write
    atomic_write(tmp_path / "g.bin", b"y")
    assert (tmp_path / "g.bin").read_bytes() == b"y" and len(seen) == 3


def test_sigkill_at_every_moment_of_a_save_never_loses_the_run(tmp_path):
    run = tmp_path / "Pendulum-V_mamba_s0"
    # (crash point, checkpoint step expected afterwards); every process after the first resumes
    schedule = [
        ("replay-0000000100.pt:partial", 50),    # new replay half written
        ("replay-0000000150.pt:synced", 100),    # new replay complete, not renamed
        ("checkpoint.pt:partial@2", 150),        # new checkpoint half written (2nd save of that process)
        ("checkpoint.pt:synced", 150),           # new checkpoint complete, not renamed
        ("checkpoint.pt:renamed@2", 250),        # committed, folder not yet fsynced
        ("unit:committed", 300),                 # committed, old replay not yet removed
        ("metrics.csv:partial", 300),            # while cutting metrics.csv back on resume
        (None, None),                            # a kill at an arbitrary moment of training
    ]
    left_temp = 0
    for i, (point, expected) in enumerate(schedule):
        proc = train(tmp_path, 400, *(["--resume"] if i else []), crash_at=point)
        if point is None:
            wait_for_step(proc, run, 330)
            proc.kill()
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == -signal.SIGKILL, output
        step = saved_step(run)
        if expected is not None:
            assert step == expected, (point, step)
        assert max(logged_steps(run)) - step <= EVERY  # at most checkpoint_every steps lost
        left_temp += len(list(run.glob("*.tmp")))
    assert left_temp >= 5  # the kills did land inside the writes
    proc = train(tmp_path, 400, "--resume")
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "done: 400 steps" in " ".join(output.split())
    assert not list(run.glob("*.tmp"))
    data, verdict = verify_checkpoint(run / "checkpoint.pt")
    assert data["counters"]["env_steps"] == 400 and "checksum ok" in verdict
    assert sorted(p.name for p in run.glob("replay*.pt")) == [data["replay_file"]["name"]]
    assert logged_steps(run) == list(range(10, 401, 10))  # each step once, in order
    with (run / "metrics.csv").open() as f:
        wall = [float(r["wall_s"]) for r in csv.DictReader(f)]
    assert wall == sorted(wall) and wall[-1] > wall[0]  # wall time continues across resumes


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_saves_and_says_how_to_resume(tmp_path, sig, code):
    run = tmp_path / "Pendulum-V_mamba_s0"
    proc = train(tmp_path, 100_000)
    wait_for_step(proc, run, 30)
    proc.send_signal(sig)
    output = " ".join(proc.communicate(timeout=120)[0].split())
    assert proc.returncode == code, output
    step = saved_step(run)
    assert step >= max(logged_steps(run)) >= 30  # saved where it stopped, not at the last checkpoint_every
    assert f"saved {run / 'checkpoint.pt'}" in output and "--resume" in output
    assert "Traceback" not in output
    proc = train(tmp_path, 100_000, "--resume")  # resumable: and a second stop saves again
    wait_for_step(proc, run, step + 20)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    assert saved_step(run) >= step + 20
    steps = logged_steps(run)
    assert steps == sorted(set(steps))
    verify_checkpoint(run / "checkpoint.pt")


def test_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    from typer.testing import CliRunner

    from resel.cli.main import app

    run = tmp_path / "Pendulum-V_mamba_s0"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from resel_train.persist.runlock import RunLock; "
         "lock = RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(600)", str(run)],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"in use by pid {holder.pid} "):
            RunLock(run).acquire()
        args = ["train", "--env", "Pendulum-V", "--steps", "202", "--out", str(tmp_path), "--no-progress", *TINY]
        result = CliRunner().invoke(app, args)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and f"in use by pid {holder.pid}" in text and "Traceback" not in text
        assert not (run / "metrics.csv").exists()  # refused before touching anything
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(run).acquire()  # the kernel dropped the dead holder's lock: stale, taken over
    assert lock.previous_holder == f"pid {holder.pid} on {os.uname().nodename}"
    lock.release()


def test_divergence_stops_with_step_and_quantity_and_keeps_the_last_good_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from resel.cli.main import app

    run = tmp_path / "Pendulum-V_mamba_s0"
    args = ["train", "--env", "Pendulum-V", "--steps", "260", "--out", str(tmp_path), "--no-progress", *TINY,
            "--set", "checkpoint_every=200", "--set", "algo.critic_lr=1e30", "--set", "algo.policy_lr=1e30"]
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 3, text
    assert "training diverged at step 2" in text and "critic_loss" in text and "Traceback" not in text
    assert f"the last good checkpoint {run / 'checkpoint.pt'} (step 200) is kept" in text
    data, _ = verify_checkpoint(run / "checkpoint.pt")  # the step-200 state, intact and finite
    assert data["counters"]["env_steps"] == 200
    steps = logged_steps(run)
    assert steps and max(steps) <= 210  # stopped at the first check after the updates went bad


def test_corrupted_tensor_bytes_are_detected(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {}, "policy": {"w": torch.full((1000,), 1.5)}})
    blob = bytearray(path.read_bytes())
    at = blob.find(torch.full((8,), 1.5).numpy().tobytes())
    assert at > 0
    blob[at + 1] ^= 0xFF  # zip headers untouched, one weight changed
    path.write_bytes(bytes(blob))
    assert torch.load(path, weights_only=True)["policy"]["w"].sum() != 1500  # torch alone does not notice
    with pytest.raises(CheckpointError, match="failed its checksum"):
        load_checkpoint(path)


def test_nonfinite_weights_fail_verification(tmp_path):
    path = tmp_path / "nan.pt"
    save_checkpoint(path, {"model": {}, "policy": {"w": torch.tensor([1.0, float("nan")])}})
    load_checkpoint(path)  # intact file ...
    with pytest.raises(CheckpointError, match=r"non-finite weights .*policy\.w"):
        verify_checkpoint(path)  # ... of a diverged run


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "policy.onnx", b"x")  # the one writer behind checkpoints, ONNX and engines
    finally:
        os.umask(old)
    assert (tmp_path / "policy.onnx").stat().st_mode & 0o777 == mode
