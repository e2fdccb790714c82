"""Training benchmarks: learning curves (memory vs no memory) and end-to-end throughput.

    python benchmarks/training.py learn --env Pendulum-V --encoders mamba mlp --seeds 2 --steps 50000
    python benchmarks/training.py throughput

``learn`` is a ``resel sweep`` (one trial per encoder and seed, one torch thread each, ``--parallel``
at a time; rerun the same command to resume) followed by ``resel report``: the table of mean ±
standard error over seeds at every 10k steps and the learning-curve PNG go to
benchmarks/results/learning_<env><tag>/. ``throughput`` measures environment steps per second
including updates (after warm-up) for each preset and encoder in one process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from resel_train.nets.registry import ENCODER_NAMES

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
console = Console()


def learn(args: argparse.Namespace) -> None:
    """Train (or resume) the sweep, then report it into benchmarks/results/learning_<env><tag>/."""
    from resel_experiments.report import markdown_table, write_report

    out = Path(args.out)
    if not args.summary_only:
        from resel_experiments.runner import SweepOptions, run_sweep
        from resel_experiments.sweep import SweepGrid

        grid = SweepGrid(envs=[args.env], seeds=args.seeds, encoders=args.encoders, preset=args.preset,
                         steps=args.steps, overrides=args.set or [])
        run_sweep(out, grid, SweepOptions(num_cpus=args.parallel))
    marks = list(range(10_000, args.steps + 1, 10_000)) or [args.steps]
    report = write_report(out, marks, RESULTS / f"learning_{args.env}{args.tag}")
    console.print(markdown_table(report), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {report.markdown}, {report.csv} and {', '.join(map(str, report.plots))}")


def throughput(args: argparse.Namespace) -> None:
    import torch

    from resel_train.config import resolve_config
    from resel_train.trainer import Trainer

    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="resel-throughput-"))
    results = []
    table = Table("preset", "encoder", "batch", "env steps/s (incl. updates)", "ms per env step")
    for preset, updates in (("cpu", args.updates), ("classic", max(3, args.updates // 10))):
        for encoder in ENCODER_NAMES:
            cfg = resolve_config(args.env, preset, overrides=["eval_every=1000000000", "checkpoint_every=1000000000",
                                                              f"threads={args.threads}"],
                                 out=str(scratch / preset), **{"model.encoder": encoder})
            cfg.steps = cfg.warmup_steps
            trainer = Trainer(cfg)
            trainer.train(show_progress=False)
            steps = updates * cfg.algo.update_every
            t0 = time.perf_counter()
            trainer.train(until_step=trainer.env_steps + steps, show_progress=False)
            rate = steps / (time.perf_counter() - t0)
            results.append({"preset": preset, "encoder": encoder, "batch": cfg.algo.batch_size,
                            "update_every": cfg.algo.update_every, "steps_per_s": rate})
            table.add_row(preset, encoder, str(cfg.algo.batch_size), f"{rate:.1f}", f"{1000 / rate:.1f}")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "training_throughput.json"
    path.write_text(json.dumps({"env": args.env, "threads": args.threads, "results": results}, indent=1))
    shutil.rmtree(scratch)
    console.print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("learn")
    p.add_argument("--env", default="Pendulum-V")
    p.add_argument("--encoders", nargs="+", default=["mamba", "mlp"], choices=ENCODER_NAMES)
    p.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1 per encoder")
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--set", action="append", help="extra config overrides for every run")
    p.add_argument("--parallel", type=int, default=2, help="trials at a time (CPUs of the local Ray instance)")
    p.add_argument("--out", default="runs/bench", help="the sweep folder")
    p.add_argument("--summary-only", action="store_true", help="report the sweep folder without training")
    p.add_argument("--tag", default="", help="suffix of the result folder, e.g. _encoder_lr3e-4 for a variant")
    t = sub.add_parser("throughput")
    t.add_argument("--env", default="Pendulum-V")
    t.add_argument("--updates", type=int, default=100)
    t.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.command == "learn":
        learn(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
