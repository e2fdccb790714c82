"""The `resel` command end to end on a tiny run: train -> info -> export -> rollout -> eval -> plot -> resume.

Each step is checked against what it produced or against the library call it wraps, not against labels.
"""

import re

from typer.testing import CliRunner

from resel.cli.main import app
from resel_deploy.rollout import run_rollouts
from resel_experiments.metrics import read_metrics
from resel_train.persist.checkpoint import load_checkpoint

runner = CliRunner()
TINY = ["--set", "model.mamba.d_state=4", "--set", "model.mamba.d_conv=4", "--set", "model.embed=16",
        "--set", "model.hidden=16",
        "--set", "model.mamba.dt_rank=2", "--set", "algo.batch_size=32", "--set", "warmup_steps=200",
        "--set", "eval_episodes=1", "--set", "eval_every=201", "--set", "threads=1"]


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def returns_in(table_output: str) -> list[float]:
    """The per-episode returns of a rollout table (rows: episode | return | length)."""
    return [float(m) for m in re.findall(r"│\s*\d+\s*│\s*(-?\d+\.\d+)\s*│\s*\d+\s*│", table_output)]


def test_train_export_rollout_eval_plot(tmp_path):
    out = invoke("train", "--env", "Pendulum-V", "--steps", "202", "--out", str(tmp_path), "--no-progress", *TINY)
    run = tmp_path / "Pendulum-V_mamba_s0"
    ckpt = run / "checkpoint.pt"
    assert str(ckpt) in out and load_checkpoint(ckpt)["counters"]["env_steps"] == 202
    rows = read_metrics(run)
    assert rows[-1]["step"] == 202 and "eval_return" in rows[-1] and "critic_loss" in rows[-1]

    info = invoke("info", str(ckpt))
    assert re.search(r"task_id\s*│\s*Pendulum-V", info) and re.search(r"env_steps\s*│\s*202\b", info)

    exported = invoke("export", str(ckpt), "--out", str(tmp_path / "p.onnx"))
    assert (tmp_path / "p.onnx").exists() and not (tmp_path / "p.onnx.data").exists()
    from resel.export.onnx import read_metadata

    printed = float(re.search(r"max abs error (\S+)", exported).group(1))
    assert printed == float(f"{read_metadata(tmp_path / 'p.onnx')['parity_max_abs_error']:.2e}") and printed < 1e-4

    rolled = returns_in(invoke("rollout", str(tmp_path / "p.onnx"), "--episodes", "2", "--seed", "3"))
    direct = run_rollouts(tmp_path / "p.onnx", None, 2, backend="onnxruntime", seed=3).returns
    assert rolled == [round(r, 2) for r in direct] and len(rolled) == 2

    evaluated = returns_in(invoke("eval", str(ckpt), "--episodes", "1", "--seed", "3"))
    assert evaluated == [round(r, 2) for r in run_rollouts(ckpt, None, 1, backend="torch", seed=3).returns]
    assert abs(evaluated[0] - rolled[0]) < 1e-2  # torch checkpoint and its ONNX export act alike

    invoke("plot", f"mamba={run}", "--out", str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "c.png").stat().st_size > 10_000

    invoke("train", "--env", "Pendulum-V", "--steps", "204", "--out", str(tmp_path), "--resume", "--no-progress")
    assert load_checkpoint(ckpt)["counters"]["env_steps"] == 204
    assert [r["step"] for r in read_metrics(run)].count(202) == 1


def test_envs_lists_every_task_one_per_row():
    from resel_train.envs import list_tasks

    listed = invoke("envs")
    for task in list_tasks():
        assert re.search(rf"│ {re.escape(task.id)}\s+│ {task.family}\s+│", listed), task.id
