"""`resel sweep` under misuse: a damaged sweep.json is refused key by key naming the file, a second driver on one
sweep folder is refused naming the holder, and a trial whose Ray node died is marked lost and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from resel.cli.main import app
from resel_experiments.sweep import MANIFEST, Manifest, ManifestError
from resel_train.persist.runlock import RunLock
from tests.test_cli import TINY
from tests.test_sweep import ROOT, checkpoint_steps, needs_ray, wait_until_unlocked

runner = CliRunner()
GRID = {"envs": ["Pendulum-V"], "seeds": 1, "encoders": ["mamba"], "preset": "auto", "steps": 220, "overrides": []}
TRIAL = {"env": "Pendulum-V", "encoder": "mamba", "seed": 0, "run": "Pendulum-V_mamba_s0", "target_steps": 220,
         "status": "finished", "env_steps": 220, "eval_return": -900.0, "resumed_from": None, "node": "vm",
         "attempts": 1, "error": None, "traceback": None, "updated": 1.0}


def manifest(**changes) -> dict:
    data = {"format": "resel-sweep", "version": 1, "grid": dict(GRID), "resources": {},
            "trials": {"Pendulum-V/mamba/0": dict(TRIAL)}}
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if not field:
            data[section] = value
        elif value is None:
            target = data["grid"] if section == "grid" else data["trials"]["Pendulum-V/mamba/0"]
            del target[field]
        else:
            (data["grid"] if section == "grid" else data["trials"]["Pendulum-V/mamba/0"])[field] = value
    return data


def valid_text() -> str:
    return json.dumps(manifest())


# (name, sweep.json bytes, words of the one-line error)
CASES = [
    ("truncated", valid_text()[:70].encode(), ["is not valid JSON", "cut short"]),
    ("not UTF-8", b"\xff\xfe{}", ["is not valid JSON"]),
    ("a JSON list", b"[1, 2]", ["is not a resel sweep manifest"]),
    ("another format", json.dumps({"format": "x"}).encode(), ["is not a resel sweep manifest"]),
    ("newer version", json.dumps(manifest(version=7)).encode(), ["manifest version 7", "reads version 1"]),
    ("no trials", json.dumps({k: v for k, v in manifest().items() if k != "trials"}).encode(), ["no 'trials'"]),
    ("trials a list", json.dumps(manifest(trials=[])).encode(), ["key 'trials' must be a JSON object"]),
    ("no grid", json.dumps({k: v for k, v in manifest().items() if k != "grid"}).encode(), ["no 'grid'"]),
    ("grid envs a string", json.dumps(manifest(**{"grid.envs": "Pendulum-V"})).encode(),
     ["grid.envs must be a non-empty list of task ids"]),
    ("grid seeds text", json.dumps(manifest(**{"grid.seeds": "x"})).encode(), ["grid.seeds must be a positive integer"]),
    ("grid seeds 0", json.dumps(manifest(**{"grid.seeds": 0})).encode(), ["grid.seeds"]),
    ("grid steps negative", json.dumps(manifest(**{"grid.steps": -4})).encode(), ["grid.steps"]),
    ("grid unknown key", json.dumps(manifest(**{"grid.colour": 1})).encode(), ["grid has unknown key 'colour'"]),
    ("grid without seeds", json.dumps(manifest(**{"grid.seeds": None})).encode(), ["grid has no 'seeds'"]),
    ("trial without run", json.dumps(manifest(**{"trials.run": None})).encode(),
     ["trials['Pendulum-V/mamba/0'] has no 'run'"]),
    ("trial run escapes the folder", json.dumps(manifest(**{"trials.run": "../elsewhere"})).encode(),
     ["trials['Pendulum-V/mamba/0'].run must be a run folder name"]),
    ("trial status unknown", json.dumps(manifest(**{"trials.status": "done"})).encode(),
     [".status must be one of pending, running, finished, failed, lost, interrupted"]),
    ("trial seed a bool", json.dumps(manifest(**{"trials.seed": True})).encode(), [".seed must be an integer"]),
    ("trial steps text", json.dumps(manifest(**{"trials.env_steps": "10"})).encode(), [".env_steps"]),
    ("trial under another id", json.dumps(manifest(**{"trials.seed": 3})).encode(),
     ["trials['Pendulum-V/mamba/0'] holds trial 'Pendulum-V/mamba/3'"]),
]


@pytest.mark.parametrize("name, content, words", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_manifest_is_refused_naming_the_file_and_the_key(tmp_path, name, content, words):
    path = tmp_path / MANIFEST
    path.write_bytes(content)
    with pytest.raises(ManifestError):
        Manifest.load(tmp_path)
    if importlib_ray_missing():
        return
    for argv in (["sweep", "--out", str(tmp_path)], ["report", str(tmp_path)]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (name, result.output)
        assert "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {path} "), result.output
        text = " ".join(result.output.split())
        for word in [*words, "fix it, or move it away"]:
            assert word in text, (name, text)
    assert path.read_bytes() == content and {p.name for p in tmp_path.iterdir()} <= {MANIFEST, "sweep.lock"}


def importlib_ray_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is None


def test_a_valid_manifest_round_trips(tmp_path):
    (tmp_path / MANIFEST).write_text(valid_text())
    loaded = Manifest.load(tmp_path)
    loaded.save(tmp_path)
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest()


@needs_ray
@pytest.mark.parametrize("state", ["new sweep", "existing sweep"])
def test_a_second_driver_is_refused_naming_the_holder(tmp_path, state):
    out = tmp_path / "sweep"
    out.mkdir()
    if state == "existing sweep":
        (out / MANIFEST).write_text(valid_text())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    holder = RunLock(out, "sweep.lock").acquire()  # the first driver
    try:
        result = runner.invoke(app, ["sweep", "--out", str(out), "--envs", "Pendulum-V", "--seeds", "1", "--steps",
                                     "220", "--num-cpus", "1", *TINY])
    finally:
        holder.release()
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"{out} is in use by pid {os.getpid()}" in text and "two drivers on one sweep" in text
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "sweep.lock"} == before


@needs_ray
def test_a_trial_whose_node_died_is_marked_lost_and_resumes(tmp_path):
    """SIGKILL the local Ray node's raylet and workers mid-trial (what a node death is): the driver says so in one
    line, the manifest says lost at the checkpoint's step, and --retry-failed resumes the trial from there."""
    out, run = tmp_path / "sweep", tmp_path / "sweep" / "Pendulum-V_mamba_s0"
    steps = 1200
    argv = ["sweep", "--envs", "Pendulum-V", "--seeds", "1", "--steps", str(steps), "--num-cpus", "1", *TINY,
            "--set", "checkpoint_every=100", "--set", "log_every=100", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "resel.cli.main", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while checkpoint_steps(run) == 0:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint within 150 s"
            time.sleep(0.05)
        group = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
        node = [int(line.split()[0]) for line in group.splitlines()  # the node agent and the workers it runs
                if line.split()[1].endswith("/raylet") or line.split()[1].startswith("ray::")]
        assert len(node) >= 2, group
        for pid in node:
            os.kill(pid, signal.SIGKILL)
        output = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    assert "Ray lost a node" in output and "marked lost" in output and "run the same command again" in output
    wait_until_unlocked(run)
    trial = json.loads((out / MANIFEST).read_text())["trials"]["Pendulum-V/mamba/0"]
    assert trial["status"] == "lost" and "died" in trial["error"] and 0 < trial["env_steps"] < steps
    kept = checkpoint_steps(run)
    assert trial["env_steps"] <= kept
    result = runner.invoke(app, ["sweep", "--out", str(out), "--retry-failed", "--num-cpus", "1"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "1 trials, 1 selected, 0 already finished, 1 to run" in text and f"resumed from step {kept}" in text
    assert json.loads((out / MANIFEST).read_text())["trials"]["Pendulum-V/mamba/0"]["status"] == "finished"
    assert checkpoint_steps(run) == steps
