"""Every bad input from issue 11 ends in exit code 2 (3: diverged), one line naming the problem, no traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resel.cli.main import app
from tests.test_cli import TINY

runner = CliRunner()
UNWRITABLE = "/sys/resel-unwritable" if os.geteuid() == 0 else "/resel-unwritable"


def train(out: Path, *args: str) -> list[str]:
    return ["train", "--env", "Pendulum-V", "--steps", "202", "--out", str(out), "--no-progress", *TINY, *args]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run to resume, inspect, export and plot."""
    out = tmp_path_factory.mktemp("cli_errors")
    result = runner.invoke(app, train(out))
    assert result.exit_code == 0, result.output
    return out / "Pendulum-V_mamba_s0"


def files(tmp: Path) -> dict[str, Path]:
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "bad.toml").write_text("[algo\nbatch_size = 3\n")
    (tmp / "a_file").write_text("x")
    (tmp / "adir").mkdir(exist_ok=True)
    return {"empty": tmp / "empty.pt", "toml": tmp / "bad.toml", "file": tmp / "a_file", "dir": tmp / "adir"}


# (name, argv builder(tmp, files, run), words the one-line message must contain)
CASES = [
    ("unknown task id", lambda t, f, r: ["train", "--env", "Walker3d"], ["Unknown task id 'Walker3d'", "Walker2d"]),
    ("missing checkpoint", lambda t, f, r: ["info", str(t / "nope.pt")], ["not found", "nope.pt"]),
    ("unknown section", lambda t, f, r: train(t, "--set", "foo.bar=1"), ["unknown config section 'foo'"]),
    ("eval_every=0", lambda t, f, r: train(t, "--set", "eval_every=0"), ["'eval_every'", ">= 1"]),
    ("checkpoint_every=0", lambda t, f, r: train(t, "--set", "checkpoint_every=0"), ["'checkpoint_every'", ">= 1"]),
    ("threads=-1", lambda t, f, r: train(t, "--set", "threads=-1"), ["'threads'", ">= 0"]),
    ("seed -1", lambda t, f, r: train(t, "--seed", "-1"), ["'seed'", ">= 0"]),
    ("device gpu", lambda t, f, r: train(t, "--device", "gpu"), ["'device'", "cuda:N"]),
    ("negative batch", lambda t, f, r: train(t, "--set", "algo.batch_size=-5"), ["'algo.batch_size'", ">= 1"]),
    ("capacity < episode", lambda t, f, r: train(t, "--set", "replay_capacity=100"),
     ["'replay_capacity'", "200 transitions"]),
    ("steps -5", lambda t, f, r: train(t, "--steps", "-5"), ["'steps'", ">= 1"]),
    ("steps < warmup", lambda t, f, r: train(t, "--steps", "100"), ["'steps'", "warmup_steps=200"]),
    ("critic_lr nan", lambda t, f, r: train(t, "--set", "algo.critic_lr=nan"), ["'algo.critic_lr'", "finite"]),
    ("gamma -3", lambda t, f, r: train(t, "--set", "algo.gamma=-3"), ["'algo.gamma'", "0 < gamma <= 1"]),
    ("eval_episodes=0", lambda t, f, r: train(t, "--set", "eval_episodes=0"), ["'eval_episodes'", ">= 1"]),
    ("target_entropy abc", lambda t, f, r: train(t, "--set", "algo.target_entropy=abc"),
     ["'algo.target_entropy'", "a number or null", "'abc'"]),
    ("invalid TOML", lambda t, f, r: train(t, "--config", str(f["toml"])), ["bad.toml", "not valid TOML"]),
    ("missing config", lambda t, f, r: train(t, "--config", str(t / "nope.toml")), ["No such file", "nope.toml"]),
    ("unwritable out", lambda t, f, r: train(Path(UNWRITABLE)), [UNWRITABLE]),
    ("out is a file", lambda t, f, r: train(f["file"]), ["a_file"]),
    ("resume changed --set", lambda t, f, r: [*train(r.parent, "--resume", "--set", "algo.gamma=0.5")],
     ["--resume cannot change", "algo.gamma=0.5"]),
    ("resume changed --device", lambda t, f, r: [*train(r.parent, "--resume", "--device", "cpu")],
     ["--resume cannot change", "device='cpu'"]),
    ("resume smaller --steps", lambda t, f, r: [*train(r.parent, "--resume"), "--steps", "201"],
     ["--resume cannot change", "steps=201"]),
    ("info empty file", lambda t, f, r: ["info", str(f["empty"])], ["empty (0 bytes)"]),
    ("export empty file", lambda t, f, r: ["export", str(f["empty"])], ["empty (0 bytes)"]),
    ("info directory", lambda t, f, r: ["info", str(r)], ["is a directory", "checkpoint.pt?"]),
    ("eval directory", lambda t, f, r: ["eval", str(f["dir"])], ["is a directory"]),
    ("export out unwritable", lambda t, f, r: ["export", str(r / "checkpoint.pt"), "--out", f"{UNWRITABLE}/p.onnx"],
     [UNWRITABLE]),
    ("export out under a file", lambda t, f, r: ["export", str(r / "checkpoint.pt"), "--out", f"{f['file']}/p.onnx"],
     ["a_file"]),
    ("plot unknown metric", lambda t, f, r: ["plot", str(r), "--metric", "foo", "--out", str(t / "c.png")],
     ["'foo'", "eval_return"]),
    ("plot out unwritable", lambda t, f, r: ["plot", str(r), "--out", f"{UNWRITABLE}/c.png"], [UNWRITABLE]),
    ("plot out under a file", lambda t, f, r: ["plot", str(r), "--out", f"{f['file']}/c.png"], ["a_file"]),
]


@pytest.mark.parametrize("name, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(tmp_path, run, name, argv, words):
    result = runner.invoke(app, argv(tmp_path, files(tmp_path), run))
    assert result.exit_code == 2, (name, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # no exception escaped the CLI
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    error = next(line for line in lines if line.startswith("error: "))
    for word in words:
        assert word in error, (name, error)


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", *train(tmp_path, "--seed", "-1")])
    assert isinstance(result.exception, ValueError) and "'seed'" in str(result.exception)


def test_disk_full_during_a_save_keeps_the_last_checkpoint(run, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = (run / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(torch, "save", no_space)
    result = runner.invoke(app, [*train(run.parent, "--resume"), "--steps", "204"])
    monkeypatch.undo()
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text
    assert "No space left on device" in text and "(step 202) is kept" in text
    assert (run / "checkpoint.pt").read_bytes() == before and not list(run.glob("*.tmp"))
    assert "verified: checksum ok" in " ".join(runner.invoke(app, ["info", str(run / "checkpoint.pt")]).output.split())
