"""The ``resel`` command: a thin typer layer over library functions that tests call directly."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from resel_train.nets.registry import ENCODER_NAMES

app = typer.Typer(help="RESeL: train recurrent off-policy RL policies and ship them as constant-time controllers.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(soft_wrap=not sys.stdout.isatty())  # in a pipe, a log or CI: no wrapping at 80 columns


def show(renderable: Any) -> None:
    """Print a table; when not on a terminal, at its natural width so that no row wraps in a log."""
    if console.is_terminal:
        console.print(renderable)
    else:
        width = console.measure(renderable, options=console.options.update(max_width=10_000)).maximum
        Console(width=width).print(renderable)
_options = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR, EXIT_DIVERGED = 2, 3


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")]
         = False) -> None:
    """RESeL: train recurrent off-policy RL policies and ship them as constant-time controllers."""
    _options["debug"] = debug


# the --encoder choices: the encoder registry's names (one list, also what validate_config and the sweep accept)
Encoder = Enum("Encoder", {name: name for name in ENCODER_NAMES}, type=str)


def _message(exc: BaseException) -> str:
    """One line: OSErrors as 'what: file', everything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _fail(exc: BaseException, code: int = EXIT_ERROR) -> None:
    console.print(f"[bold red]error:[/] {escape(_message(exc))}", soft_wrap=True)  # one line, even if long
    raise typer.Exit(code=code)


def cli_errors(command: F) -> F:
    """Turn expected failures (bad input, files, disk, missing packages, a locked run) into one line and exit 2;
    ``resel --debug ...`` re-raises them with the traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:  # click's Exit is a RuntimeError: let it through
            raise
        except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
            if _options["debug"]:
                raise
            _fail(exc)
        except KeyboardInterrupt:
            if _options["debug"]:
                raise
            console.print("[bold red]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def _presets_epilog() -> str:
    """The presets, one line each, under ``resel train --help`` (from the one table in resel_train.config)."""
    from resel_train.config import preset_lines

    return "Presets (--preset, or preset in --config / --set):\n\n" + "\n\n".join(f"- {line}" for line in preset_lines())


@app.command(epilog=_presets_epilog())
@cli_errors
def train(
    env: Annotated[str, typer.Option(help="Task id (see `resel envs`).")],
    steps: Annotated[Optional[int], typer.Option(help="The run's total environment steps (default: the preset's); "
                                                      "with --resume, a larger total extends the run.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    encoder: Annotated[Optional[Encoder], typer.Option(help="Context encoder.")] = None,
    preset: Annotated[str, typer.Option(help="auto, or a preset listed below; auto defers to a preset named in "
                                             "--config or --set.")] = "auto",
    out: Annotated[Optional[str], typer.Option(help="Parent folder of the run folder.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML/YAML file of config values.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any field, e.g. algo.batch_size=500 "
                                                      "(`resel config show` lists them).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in the run folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train RESeL on a task; writes checkpoint.pt, metrics.csv and TensorBoard logs to the run folder."""
    from resel.api import RESeL
    from resel_train.config import auto_preset_note, load_config_file
    from resel_train.guard import TrainingDiverged
    from resel_train.trainer import TrainingInterrupted

    flags = {k: v for k, v in (("steps", steps), ("model.encoder", encoder.value if encoder else None))
             if v is not None}
    model = RESeL(env, preset, seed, out, device, config=config, set=set_ or [], resume=resume, **flags)
    trainer = model.trainer
    named = preset != "auto" or any(i.partition("=")[0].strip() == "preset" for i in set_ or []) or (
        config is not None and "preset" in load_config_file(config))
    if not named and trainer.cfg.preset == "cpu" and not resume:
        console.print(auto_preset_note(env))
    if trainer.store.previous_holder:
        console.print(f"took over the stale lock of a process that is gone ({trainer.store.previous_holder})")
    console.print(f"run folder: [bold]{trainer.run_dir}[/]  preset: {trainer.cfg.preset}  "
                  f"device: {trainer.device}  steps: {trainer.cfg.steps}")
    c = trainer.cfg
    again = f"resel train --env {c.env} --out {c.out} --seed {c.seed} --encoder {c.model.encoder} --resume"
    try:
        if model.run_timesteps < c.steps:  # --steps is the run's total: a resume trains what is left
            model.learn(c.steps - model.run_timesteps, progress_bar=progress, reset_num_timesteps=False)
        else:
            trainer.close()
    except OSError as exc:  # e.g. the disk filled up during a save: the unit on disk is still whole
        if _options["debug"]:
            raise
        _fail(OSError(f"{_message(exc)}; {trainer.store.kept()}"))
    except TrainingInterrupted as exc:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the run is saved: another signal now just ends the process
            signal.signal(sig, signal.SIG_DFL)
        console.print(f"stopped by {escape(str(exc))}; resume with: {again}", soft_wrap=True)
        raise typer.Exit(code=exc.exit_code) from None
    except TrainingDiverged as exc:
        if _options["debug"]:
            raise
        _fail(ValueError(f"{exc}; stopped without saving: {trainer.store.kept()}. Lower the learning rates, or resume "
                         f"from that checkpoint ({again})"), EXIT_DIVERGED)
    last = trainer.last_evaluation
    success = None if last is None else last.success_rate
    console.print(f"done: {model.run_timesteps} steps, last eval return {None if last is None else last.mean_return}"
                  + ("" if success is None else f", success rate {success:.0%}"))
    console.print(f"checkpoint: {trainer.run_dir / 'checkpoint.pt'}")


config_app = typer.Typer(help="Inspect the training config.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
@cli_errors
def config_show(
    env: Annotated[str, typer.Option(help="Task id (see `resel envs`).")],
    preset: Annotated[str, typer.Option(help="As `resel train --preset`.")] = "auto",
    config: Annotated[Optional[Path], typer.Option(help="TOML/YAML file of config values.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any field, e.g. algo.batch_size=500")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
) -> None:
    """Print the config `resel train` would use with these options: every key, its value and its help."""
    from resel_train.config import field_rows, resolve_config, validate_config

    cfg = resolve_config(env, preset, config, set_ or [], device=device)
    validate_config(cfg)
    table = Table("key", "type", "value", "help")
    for key, kind, value, text in field_rows(cfg):
        table.add_row(key, kind, "null" if value is None else str(value), text)
    show(table)


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

    report = run_rollouts(model, env, episodes, backend=backend, seed=seed, stochastic=stochastic, device=device)
    show(report.table())


@app.command("eval")
@cli_errors
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
@cli_errors
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
@cli_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt (or, for trt, an .onnx file).")],
    format: Annotated[Format, typer.Option("--format", help="onnx, or trt (TensorRT engine; needs a GPU).")] = Format.onnx,
    fp16: Annotated[bool, typer.Option(help="fp16 weights and matmuls; softplus, exp and state stay fp32.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: next to the input).")] = None,
) -> None:
    """Export the stepwise policy: ONNX with a parity certificate, or a TensorRT engine."""
    if format is Format.onnx:
        from resel.export.onnx import export_onnx

        report = export_onnx(checkpoint, out, fp16=fp16)
        console.print(f"wrote {report.path} (opset {report.opset}, {report.precision}, "
                      f"{report.size_bytes / 1e6:.2f} MB); parity vs torch over {report.check_steps} steps at "
                      f"batch {report.check_batches}: max abs error {report.max_abs_error:.2e}")
    else:
        from resel.export.tensorrt import build_engine

        console.print(f"wrote {build_engine(checkpoint, out, fp16=fp16)}")


@app.command()
@cli_errors
def envs() -> None:
    """List every task id with its family and what it tests."""
    from resel_train.envs import list_tasks

    table = Table("id", "family", "reward input", "steps", "description")
    for info in list_tasks():
        table.add_row(info.id, info.family, "yes" if info.reward_as_input else "", str(info.max_episode_steps),
                      info.description)
    show(table)


@app.command()
@cli_errors
def info(checkpoint: Annotated[Path, typer.Argument(help="A checkpoint.pt.")]) -> None:
    """Show what a checkpoint holds (task, model, counters) after verifying it (checksum, finite weights)."""
    from resel_train.persist.checkpoint import verify_checkpoint

    data, verdict = verify_checkpoint(checkpoint)
    table = Table("key", "value")
    for key, value in {**data["model"], **data.get("counters", {})}.items():
        table.add_row(key, str(value))
    show(table)
    console.print(verdict)


@app.command()
@cli_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders; LABEL=RUN groups runs under one label.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("learning_curve.png"),
    metric: Annotated[str, typer.Option(help="Column of metrics.csv to plot.")] = "eval_return",
    title: Annotated[str, typer.Option(help="Figure title.")] = "",
) -> None:
    """Plot learning curves (mean ± standard error over runs sharing a label) to a PNG."""
    from resel_experiments.plots import plot_runs

    groups: dict[str, list[Path]] = {}
    for item in map(str, runs):
        label, sep, path = item.partition("=")
        groups.setdefault(label if sep else Path(item).name, []).append(Path(path if sep else item))
    console.print(f"wrote {plot_runs(groups, out, metric, title)}")


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@app.command()
def sweep(
    envs: Annotated[Optional[str], typer.Option(help="Task ids, comma-separated (default: the manifest's grid).")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per task and encoder: 0 .. N-1.")] = None,
    out: Annotated[Path, typer.Option(help="Sweep folder: a run folder per trial and sweep.json.")] = Path("runs/sweep"),
    preset: Annotated[str, typer.Option(help="auto (each task's family preset) or a preset name, e.g. cpu.")] = "auto",
    steps: Annotated[Optional[int], typer.Option(help="Environment steps per trial (default: each preset's).")] = None,
    encoders: Annotated[str, typer.Option(help=f"Context encoders, comma-separated: {', '.join(ENCODER_NAMES)}.")]
    = "mamba",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any field in every trial.")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster: auto or ray://HOST:PORT (default: local).")] = None,
    num_cpus: Annotated[Optional[int], typer.Option(help="CPUs of the local Ray instance (default: all).")] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs per trial; torch threads follow it.")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per trial; fractions share a GPU, e.g. 0.25.")] = 0.0,
    max_retries: Annotated[int, typer.Option(help="Re-runs of a trial whose worker or node died.")] = 2,
    only: Annotated[Optional[list[str]], typer.Option(help="Run only this trial, ENV/encoder/seed (repeatable).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run only the trials that failed or were lost last time.")] = False,
) -> None:
    """Run a task x encoder x seed grid on Ray; rerun the same command to resume (finished trials are skipped)."""
    from resel_train.persist.runlock import RunLocked

    try:
        from resel_experiments.runner import SweepOptions, run_sweep
        from resel_experiments.sweep import SweepGrid

        if (envs is None) != (seeds is None):
            raise ValueError("give --envs and --seeds together (or neither, to reuse the sweep's manifest)")
        grid = None if envs is None else SweepGrid(_csv(envs), seeds, _csv(encoders), preset, steps, set_ or [])
        options = SweepOptions(address, num_cpus, cpus_per_trial, gpus_per_trial, max_retries, only or [], retry_failed)
        result = run_sweep(out, grid, options, console)
    except (ValueError, OSError, ImportError, RunLocked) as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None
    if result.failed:
        raise typer.Exit(code=1)


@app.command()
def report(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep folder (or any folder of run folders).")],
    steps: Annotated[Optional[str], typer.Option(help="Step counts for the table, comma-separated "
                                                      "(default: the trials' targets).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: SWEEP_DIR/report).")] = None,
    metric: Annotated[str, typer.Option(help="The logged evaluation column to report, e.g. "
                                             "eval_success_rate.")] = "eval_return",
) -> None:
    """Mean ± standard error over seeds at chosen steps beside the paper's numbers; one learning-curve PNG per task."""
    from resel_experiments.report import markdown_table, parse_steps, write_report

    try:
        result = write_report(sweep_dir, None if steps is None else parse_steps(steps), out, metric)
    except (ValueError, OSError) as exc:
        _fail(exc)
    for name, reason in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(name)}: {escape(reason)}", soft_wrap=True)
    console.print(f"{len(result.runs)} runs ({result.finished} finished) over {len({r.env for r in result.runs})} "
                  f"tasks" + (f"; {len(result.skipped)} skipped (listed above)" if result.skipped else ""))
    console.print(markdown_table(result), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {result.markdown}, {result.csv} and {len(result.plots)} plots")


if __name__ == "__main__":
    app()
