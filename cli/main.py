"""The ``resel`` command: a thin typer layer over library functions that tests call directly."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="RESeL: train recurrent off-policy RL policies and ship them as constant-time controllers.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


class Encoder(str, Enum):
    mamba = "mamba"
    gru = "gru"
    lstm = "lstm"
    s5 = "s5"
    mlp = "mlp"


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(code=2)


@app.command()
def train(
    env: Annotated[str, typer.Option(help="Task id (see `resel envs`).")],
    steps: Annotated[Optional[int], typer.Option(help="Environment steps (default: the preset's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    encoder: Annotated[Optional[Encoder], typer.Option(help="Context encoder.")] = None,
    preset: Annotated[str, typer.Option(help="auto (by task family), mujoco, pybullet, gravity, meta, classic, "
                                             "keydoor, or cpu (2-core friendly; see README)")] = "auto",
    out: Annotated[Optional[str], typer.Option(help="Parent folder of the run folder.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML/YAML file of config values.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any field, e.g. algo.batch_size=500")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in the run folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train RESeL on a task; writes checkpoint.pt, metrics.csv and TensorBoard logs to the run folder."""
    from resel_train.config import resolve_config
    from resel_train.trainer import Trainer

    try:
        flags = {"steps": steps, "seed": seed, "device": device, "out": out,
                 "model.encoder": encoder.value if encoder else None}
        cfg = resolve_config(env, preset, config, set_, **flags)
        trainer = Trainer(cfg, resume=resume)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
        _fail(exc)
    console.print(f"run folder: [bold]{trainer.run_dir}[/]  preset: {trainer.cfg.preset}  "
                  f"device: {trainer.device}  steps: {trainer.cfg.steps}")
    result = trainer.train(show_progress=progress)
    console.print(f"done: {result['env_steps']} steps, last eval return {result['eval_return']}")
    console.print(f"checkpoint: {trainer.run_dir / 'checkpoint.pt'}")


class Backend(str, Enum):
    onnxruntime = "onnxruntime"
    torch = "torch"
    tensorrt = "tensorrt"


class Format(str, Enum):
    onnx = "onnx"
    trt = "trt"


def _rollout(model: Path, env: str | None, episodes: int, backend: str, seed: int, stochastic: bool,
             device: str | None = None) -> None:
    from resel_deploy.rollout import run_rollouts

    try:
        report = run_rollouts(model, env, episodes, backend=backend, seed=seed, stochastic=stochastic, device=device)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        _fail(exc)
    console.print(report.table())


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt written by `resel train`.")],
    env: Annotated[Optional[str], typer.Option(help="Task id (default: the checkpoint's task).")] = None,
    episodes: Annotated[int, typer.Option(help="Episodes to run.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the environment.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu (default) or cuda: where the policy runs.")] = None,
) -> None:
    """Evaluate the deterministic policy of a checkpoint (torch backend, held-out tasks) and print returns."""
    _rollout(checkpoint, env, episodes, "torch", seed, stochastic=False, device=device)


@app.command()
def rollout(
    model: Annotated[Path, typer.Argument(help="A checkpoint, an .onnx file or a TensorRT engine.")],
    env: Annotated[Optional[str], typer.Option(help="Task id (default: the model's task).")] = None,
    episodes: Annotated[int, typer.Option(help="Episodes to run.")] = 5,
    backend: Annotated[Backend, typer.Option(help="Inference backend.")] = Backend.onnxruntime,
    seed: Annotated[int, typer.Option(help="Seed of the environment.")] = 0,
    stochastic: Annotated[bool, typer.Option(help="Sample actions instead of tanh(mean).")] = False,
    device: Annotated[Optional[str], typer.Option(help="torch backend only: cpu (default) or cuda.")] = None,
) -> None:
    """Run episodes with the constant-time controller; report returns and per-step latency percentiles."""
    _rollout(model, env, episodes, backend.value, seed, stochastic, device)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt (or, for trt, an .onnx file).")],
    format: Annotated[Format, typer.Option("--format", help="onnx, or trt (TensorRT engine; needs a GPU).")] = Format.onnx,
    fp16: Annotated[bool, typer.Option(help="fp16 weights and matmuls; softplus, exp and state stay fp32.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: next to the input).")] = None,
) -> None:
    """Export the stepwise policy: ONNX with a parity certificate, or a TensorRT engine."""
    try:
        if format is Format.onnx:
            from export.onnx import export_onnx

            report = export_onnx(checkpoint, out, fp16=fp16)
            console.print(f"wrote {report.path} (opset {report.opset}, {report.precision}, "
                          f"{report.size_bytes / 1e6:.2f} MB); parity vs torch over {report.check_steps} steps at "
                          f"batch {report.check_batches}: max abs error {report.max_abs_error:.2e}")
        else:
            from export.tensorrt import build_engine

            console.print(f"wrote {build_engine(checkpoint, out, fp16=fp16)}")
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        _fail(exc)


@app.command()
def envs() -> None:
    """List every task id with its family and what it tests."""
    from resel_train.envs import list_tasks

    table = Table("id", "family", "reward input", "steps", "description")
    for info in list_tasks():
        table.add_row(info.id, info.family, "yes" if info.reward_as_input else "", str(info.max_episode_steps),
                      info.description)
    console.print(table)


@app.command()
def info(checkpoint: Annotated[Path, typer.Argument(help="A checkpoint.pt.")]) -> None:
    """Show what a checkpoint holds: task, model, counters and the resolved config."""
    from resel_train.checkpoint import CheckpointError, load_checkpoint

    try:
        data = load_checkpoint(checkpoint)
    except (CheckpointError, FileNotFoundError) as exc:
        _fail(exc)
    table = Table("key", "value")
    for key, value in {**data["model"], **data.get("counters", {})}.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders; LABEL=RUN groups runs under one label.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("learning_curve.png"),
    metric: Annotated[str, typer.Option(help="Column of metrics.csv to plot.")] = "eval_return",
    title: Annotated[str, typer.Option(help="Figure title.")] = "",
) -> None:
    """Plot learning curves (mean and min-max over runs sharing a label) to a PNG."""
    from resel_train.logger import plot_learning_curves

    groups: dict[str, list[Path]] = {}
    for item in map(str, runs):
        label, sep, path = item.partition("=")
        groups.setdefault(label if sep else Path(item).name, []).append(Path(path if sep else item))
    try:
        console.print(f"wrote {plot_learning_curves(groups, out, metric, title)}")
    except FileNotFoundError as exc:
        _fail(exc)


if __name__ == "__main__":
    app()
