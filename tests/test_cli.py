"""The `resel` command end to end on a tiny run: train -> info -> export -> rollout -> eval -> plot."""

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
TINY = ["--set", "model.d_state=4", "--set", "model.d_conv=4", "--set", "model.embed=16", "--set", "model.hidden=16",
        "--set", "model.dt_rank=2", "--set", "algo.batch_size=32", "--set", "warmup_steps=200",
        "--set", "eval_episodes=1", "--set", "eval_every=201", "--set", "threads=1"]


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich wraps lines at the terminal width


def test_train_export_rollout_eval_plot(tmp_path):
    out = invoke("train", "--env", "Pendulum-V", "--steps", "202", "--out", str(tmp_path), "--no-progress", *TINY)
    assert "checkpoint:" in out
    run = tmp_path / "Pendulum-V_mamba_s0"
    ckpt = run / "checkpoint.pt"
    assert "Pendulum-V" in invoke("info", str(ckpt))
    assert "max abs error" in invoke("export", str(ckpt), "--out", str(tmp_path / "p.onnx"))
    assert (tmp_path / "p.onnx").exists() and not (tmp_path / "p.onnx.data").exists()
    assert "latency" in invoke("rollout", str(tmp_path / "p.onnx"), "--episodes", "1")
    assert "return" in invoke("eval", str(ckpt), "--episodes", "1")
    invoke("plot", f"mamba={run}", "--out", str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    resumed = invoke("train", "--env", "Pendulum-V", "--steps", "204", "--out", str(tmp_path), "--resume",
                     "--no-progress")
    assert "done: 204 steps" in resumed


def test_errors_are_one_clear_line():
    result = runner.invoke(app, ["train", "--env", "Walker3d"])
    assert result.exit_code == 2 and "Did you mean: Walker2d" in " ".join(result.output.split())
    result = runner.invoke(app, ["info", "/nonexistent/checkpoint.pt"])
    assert result.exit_code == 2 and "checkpoint not found" in " ".join(result.output.split())
    assert "Walker2d-gravity" in runner.invoke(app, ["envs"]).output
