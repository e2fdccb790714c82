"""A save that fails on disk (full, quota, I/O error; inside torch.save or not) and a second stop signal both end
with one line saying which checkpoint the run folder keeps, and the committed unit is untouched."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resel.cli.main import app
from resel_train.persist.checkpoint import load_checkpoint, verify_checkpoint
from tests.test_cli_errors import train

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


class FailingFile:
    """A file whose writes fail with ``err`` once ``limit`` bytes went through (a disk that fills up mid-write)."""

    def __init__(self, f, err: int, limit: int) -> None:
        self._f, self._err, self._left = f, err, limit

    def write(self, data) -> int:
        self._left -= len(data)
        if self._left < 0:
            raise OSError(self._err, os.strerror(self._err))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def failing_writes(monkeypatch, name: str, err: int, limit: int) -> None:
    """Make writes into the temp file of ``name`` (e.g. checkpoint.pt) fail after ``limit`` bytes."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        return FailingFile(f, err, limit) if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(
            name + ".") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def raising_torch_save(monkeypatch, name: str, err: int, limit: int) -> None:
    def save(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(torch, "save", save)


def failing_fsync(monkeypatch, name: str, err: int, limit: int) -> None:
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(name + "."):
            raise OSError(err, os.strerror(err))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


# (name, how the disk fails, errno, bytes that get through, the file the message names)
CASES = [
    ("disk full in torch.save of the checkpoint, first write", failing_writes, errno.ENOSPC, 0, "checkpoint.pt"),
    ("disk full in torch.save of the checkpoint, mid-file", failing_writes, errno.ENOSPC, 50_000, "checkpoint.pt"),
    ("disk full in torch.save of the replay", failing_writes, errno.ENOSPC, 100, "replay-0000000204.pt"),
    ("quota exceeded in torch.save", failing_writes, errno.EDQUOT, 1000, "checkpoint.pt"),
    ("I/O error in torch.save", failing_writes, errno.EIO, 1000, "checkpoint.pt"),
    ("torch.save itself raises OSError", raising_torch_save, errno.ENOSPC, 0, "replay-0000000204.pt"),
    ("fsync fails", failing_fsync, errno.EIO, 0, "replay-0000000204.pt"),
]


@pytest.fixture
def run(tmp_path) -> Path:
    result = runner.invoke(app, train(tmp_path))
    assert result.exit_code == 0, result.output
    return tmp_path / "Pendulum-V_mamba_s0"


@pytest.mark.parametrize("name, fail, err, limit, file", CASES, ids=[c[0] for c in CASES])
def test_a_failed_save_says_the_last_good_checkpoint_is_kept(run, monkeypatch, name, fail, err, limit, file):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix == ".pt"}
    fail(monkeypatch, file, err, limit)
    result = runner.invoke(app, [*train(run.parent, "--resume"), "--steps", "204"])
    monkeypatch.undo()
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (name, result.output)
    assert "Traceback" not in text and "enforce fail" not in text
    error = next(line for line in result.output.splitlines() if line.startswith("error: "))
    assert f"error: {os.strerror(err)}: {run / file};" in " ".join(error.split()), error
    assert f"the last good checkpoint {run / 'checkpoint.pt'} (step 202) is kept" in text
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix == ".pt"}
    assert after == before and not list(run.glob("*.tmp"))  # the committed unit, and nothing else, is there
    verify_checkpoint(run / "checkpoint.pt")


SCRIPT = """
import os, signal, sys
from resel import RESeL
from resel_train import collector, run_store
sig, where = getattr(signal, sys.argv[1]), sys.argv[2]
model = RESeL("Pendulum-V", out=sys.argv[3], **{"model.mamba.d_state": 4, "model.mamba.d_conv": 4, "model.embed": 16,
    "model.hidden": 16, "model.mamba.dt_rank": 2, "algo.batch_size": 32, "warmup_steps": 200, "eval_episodes": 1,
    "eval_every": 10**6, "threads": 1, "checkpoint_every": 100})
model.learn(202)  # a committed unit at step 202
real_save, real_step = run_store.save_run_state, collector.Collector.step
def twice():
    os.kill(os.getpid(), sig); os.kill(os.getpid(), sig)
def save_run_state(*args):
    twice()
    return real_save(*args)
def step(self):
    trajectory = real_step(self)
    if self.env_steps == 250:
        twice()
    return trajectory
if where == "save":
    run_store.save_run_state = save_run_state
else:
    collector.Collector.step = step
model.learn(198)  # on to step 400
print("not stopped")
"""

# (signal, where the two signals arrive, step the folder keeps, words of the message)
SIGNAL_CASES = [
    ("SIGINT", "save", 202, ["second SIGINT: stopping at once", "(step 202) is kept, or step 300 if the save in "
                                                                "progress had committed"]),
    ("SIGTERM", "save", 202, ["second SIGTERM: stopping at once", "or step 300"]),
    ("SIGINT", "step", 202, ["second SIGINT: stopping at once", "(step 202) is kept; continue it with --resume"]),
]


@pytest.mark.parametrize("sig, where, step, words", SIGNAL_CASES, ids=[f"{c[0]} during a {c[1]}" for c in SIGNAL_CASES])
def test_a_second_signal_says_what_was_kept(tmp_path, sig, where, step, words):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, sig, where, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -getattr(signal, sig), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "not stopped" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("second ")]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    run = tmp_path / "Pendulum-V_mamba_s0"
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_steps"] == step
    verify_checkpoint(run / "checkpoint.pt")
