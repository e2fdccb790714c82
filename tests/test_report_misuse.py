"""`resel report` names every run folder it skipped and why, counts only the runs it used, and refuses bad
arguments with one line; the run folders are never changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resel.cli.main import app
from resel_experiments.report import parse_steps, write_report

runner = CliRunner()
GOOD = "step,eval_return\n100,-900\n200,-800\n400,-600\n"


def sweep(tmp: Path, seeds: int = 3) -> Path:
    for seed in range(seeds):
        run = tmp / f"Hopper_mamba_s{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"env: Hopper\nseed: {seed}\nsteps: 400\nmodel: {{encoder: mamba}}\n")
        (run / "metrics.csv").write_text(GOOD.replace("-600", str(-600 - 100 * seed)))
    return tmp


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
            and "report" not in p.parts}


def manifest_with_a_pending_trial(run: Path) -> None:
    trial = {"env": "Hopper", "encoder": "mamba", "seed": 9, "run": "Hopper_mamba_s9", "target_steps": 400,
             "status": "pending"}
    grid = {"envs": ["Hopper"], "seeds": 10, "encoders": ["mamba"], "preset": "auto", "steps": 400, "overrides": []}
    (run.parent / "sweep.json").write_text(json.dumps({"format": "resel-sweep", "version": 1, "grid": grid,
                                                       "resources": {}, "trials": {"Hopper/mamba/9": trial}}))


# (name, how seed 1's run folder is broken, the folder named, words of its reason)
SKIPS = [
    ("metrics.csv is binary", lambda r: (r / "metrics.csv").write_bytes(b"\xf2\x00\xffgarbage"), "Hopper_mamba_s1",
     ["metrics.csv is unreadable", "utf-8"]),
    ("metrics.csv holds text", lambda r: (r / "metrics.csv").write_text("step,eval_return\n100,abc\n"),
     "Hopper_mamba_s1", ["metrics.csv is unreadable", "'abc'"]),
    ("metrics.csv without a step column", lambda r: (r / "metrics.csv").write_text("eval_return\n-5\n"),
     "Hopper_mamba_s1", ["metrics.csv is unreadable", "no step"]),
    ("metrics.csv is a folder", lambda r: ((r / "metrics.csv").unlink(), (r / "metrics.csv").mkdir()),
     "Hopper_mamba_s1", ["metrics.csv is unreadable"]),
    ("metrics.csv missing", lambda r: (r / "metrics.csv").unlink(), "Hopper_mamba_s1", ["nothing logged yet"]),
    ("metrics.csv header only", lambda r: (r / "metrics.csv").write_text("step,eval_return\n"), "Hopper_mamba_s1",
     ["nothing logged yet"]),
    ("config.yaml is not YAML", lambda r: (r / "config.yaml").write_text(": : :\n"), "Hopper_mamba_s1",
     ["config.yaml is not a run's config"]),
    ("config.yaml without seed", lambda r: (r / "config.yaml").write_text("env: Hopper\nsteps: 400\nmodel: "
                                                                          "{encoder: mamba}\n"), "Hopper_mamba_s1",
     ["config.yaml is not a run's config", "no 'seed'"]),
    ("config.yaml is a list", lambda r: (r / "config.yaml").write_text("- 1\n"), "Hopper_mamba_s1",
     ["config.yaml is not a run's config"]),
    ("a copied run folder", lambda r: (r / "config.yaml").write_text(
        "env: Hopper\nseed: 0\nsteps: 400\nmodel: {encoder: mamba}\n"), "Hopper_mamba_s1",
     ["same task, encoder and seed as Hopper_mamba_s0"]),
    ("a trial that never started", manifest_with_a_pending_trial, "Hopper_mamba_s9", ["not started", "pending"]),
]


@pytest.mark.parametrize("name, breakage, folder, words", SKIPS, ids=[c[0] for c in SKIPS])
def test_every_skipped_run_is_named_and_the_mean_covers_only_the_runs_used(tmp_path, name, breakage, folder, words):
    root = sweep(tmp_path)
    breakage(root / "Hopper_mamba_s1")
    before = snapshot(root)
    result = runner.invoke(app, ["report", str(root), "--steps", "400"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    line = next(line for line in result.output.splitlines() if line.startswith(f"skipped {folder}:"))
    for word in words:
        assert word in line, (name, line)
    used = 3 if folder == "Hopper_mamba_s9" else 2
    assert f"{used} runs ({used} finished) over 1 tasks; 1 skipped" in text
    report = write_report(root, [400])
    assert [(n, r) for n, r in report.skipped if n == folder] and len(report.skipped) == 1
    cell = report.cells[("Hopper", "mamba", 400)]
    assert cell.n == used == len(report.runs)
    assert f"(n={used})" in text and folder in (root / "report" / "report.md").read_text()
    assert snapshot(root) == before  # the run folders are read, never changed


# (name, argv after `report SWEEP`, words of the one-line error)
BAD_ARGS = [
    ("steps not a number", ["--steps", "abc"], ["--steps", "'abc' is not a step count", "e.g. --steps 10000,50000"]),
    ("steps negative", ["--steps", "-5"], ["'-5' is not a step count"]),
    ("steps zero", ["--steps", "0"], ["'0' is not a step count"]),
    ("steps fractional", ["--steps", "100.5"], ["'100.5' is not a step count"]),
    ("steps overflow", ["--steps", "1e400"], ["'1e400' is not a step count"]),
    ("steps NaN", ["--steps", "nan"], ["'nan' is not a step count"]),
    ("steps empty", ["--steps", ","], ["names no step count"]),
    ("out is a file", ["--out", "{root}/Hopper_mamba_s0/config.yaml"], ["is a file", "give a folder"]),
    ("no such sweep folder", ["--sweep", "{root}/nope"], ["no sweep folder", "nope"]),
    ("no usable run", ["--sweep", "{root}/Hopper_mamba_s0"], ["no usable run", "no */config.yaml"]),
]


@pytest.mark.parametrize("name, args, words", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_bad_report_arguments_are_one_line(tmp_path, name, args, words):
    root = sweep(tmp_path)
    before = snapshot(root)
    args = [a.format(root=root) for a in args]
    target = str(root)
    if args[0] == "--sweep":
        target, args = args[1], args[2:]
    result = runner.invoke(app, ["report", target, *args])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (name, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in " ".join(result.output.split()), (name, result.output)
    assert snapshot(root) == before and not (root / "report").exists()


def test_steps_accepts_whole_numbers_in_any_float_form():
    assert parse_steps("10000, 5e4,100000.0") == [10000, 50000, 100000]
