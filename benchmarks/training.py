"""Training benchmarks: learning curves (memory vs no memory) and end-to-end throughput.

    python benchmarks/training.py learn --env Pendulum-V --encoders mamba mlp --seeds 0 1 --steps 50000
    python benchmarks/training.py throughput

``learn`` trains every (encoder, seed) pair as its own process (one torch thread each, two at a
time on a 2-core machine), then prints a table of the final returns (mean of the last 3
evaluations), their spread over seeds, and the first step at which each run's evaluation reaches
each threshold; it writes JSON and a PNG learning curve. ``throughput`` measures environment
steps per second including updates (after warm-up) for each preset and encoder in one process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from resel_train.nets.registry import ENCODER_NAMES

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
console = Console()


def run_dir(out: Path, env: str, encoder: str, seed: int) -> Path:
    return out / f"{env}_{encoder}_s{seed}"


def launch(env: str, encoder: str, seed: int, steps: int, preset: str, out: Path, extra: list[str]) -> subprocess.Popen:
    log = out / f"{env}_{encoder}_s{seed}.log"
    cmd = [sys.executable, "-m", "resel.cli.main", "train", "--env", env, "--encoder", encoder, "--seed", str(seed),
           "--steps", str(steps), "--preset", preset, "--out", str(out), "--no-progress", "--set", "threads=1"]
    for item in extra:
        cmd += ["--set", item]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT.parent)


def first_step_reaching(steps: np.ndarray, returns: np.ndarray, threshold: float) -> int | None:
    hit = np.nonzero(returns >= threshold)[0]
    return int(steps[hit[0]]) if len(hit) else None


def training_rate(rows: list[dict[str, float]]) -> float:
    """Mean logged env steps/s over the rows after warm-up (updates included); nan if none."""
    rates = [r["steps_per_s"] for r in rows if "critic_loss" in r and "steps_per_s" in r]
    return float(np.mean(rates)) if rates else float("nan")


def markdown_table(summary: dict) -> str:
    """The summary as a BENCHMARKS.md table: evals every 10k steps, final, steps to each threshold, rate."""
    thresholds = summary["thresholds"]
    last_step = max(max(run["steps"], default=0) for result in summary["encoders"].values()
                    for run in result["seeds"].values())
    marks = list(range(10_000, last_step + 1, 10_000)) or [last_step]
    head = ["encoder", "seed", f"eval at {' / '.join(f'{m // 1000}k' for m in marks)}", "final (last 3 evals)",
            *[f"first step >= {t:g}" for t in thresholds], "env steps/s", "wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---:|" + "---|" * len(thresholds) + "---:|---:|"]
    for encoder, result in summary["encoders"].items():
        for seed, run in result["seeds"].items():
            at = dict(zip(run["steps"], run["returns"]))
            evals = " / ".join(f"{at[m]:.0f}" if m in at else "-" for m in marks)
            reach = [str(run["reach"][str(t)]) if run["reach"][str(t)] is not None else "not reached"
                     for t in thresholds]
            lines.append(f"| {encoder} | {seed} | {evals} | {run['final']:.1f} | " + " | ".join(reach)
                         + f" | {run['steps_per_s']:.0f} | {run['wall_min']:.1f} |")
        lines.append(f"| **{encoder}** | mean ± std | | **{result['final_mean']:.1f} ± {result['final_std']:.1f}** | "
                     + "| " * len(thresholds) + f"{result['steps_per_s_mean']:.0f} | |")
    return "\n".join(lines) + "\n"


def summarise(out: Path, env: str, encoders: list[str], seeds: list[int], thresholds: list[float], tag: str = "") -> dict:
    from resel_train.logger import plot_learning_curves, read_metrics

    summary: dict = {"env": env, "thresholds": thresholds, "encoders": {}}
    table = Table("encoder", "seed", "final return", *[f"first step >= {t:g}" for t in thresholds], "env steps/s",
                  "wall (min)")
    for encoder in encoders:
        finals, rates = [], []
        per_seed = {}
        for seed in seeds:
            all_rows = read_metrics(run_dir(out, env, encoder, seed))
            rows = [r for r in all_rows if "eval_return" in r]
            steps = np.array([int(r["step"]) for r in rows])
            returns = np.array([r["eval_return"] for r in rows])
            final = float(returns[-3:].mean())
            finals.append(final)
            rate = training_rate(all_rows)
            rates.append(rate)
            reach = {str(t): first_step_reaching(steps, returns, t) for t in thresholds}
            wall = rows[-1]["wall_s"] / 60 if rows else float("nan")
            per_seed[seed] = {"final": final, "reach": reach, "steps": steps.tolist(), "returns": returns.tolist(),
                              "wall_min": wall, "steps_per_s": rate}
            table.add_row(encoder, str(seed), f"{final:.1f}", *[str(reach[str(t)]) for t in thresholds],
                          f"{rate:.0f}", f"{wall:.1f}")
        summary["encoders"][encoder] = {"final_mean": float(np.mean(finals)), "final_std": float(np.std(finals)),
                                        "steps_per_s_mean": float(np.mean(rates)), "seeds": per_seed}
        table.add_row(f"[bold]{encoder}", "mean ± std", f"{np.mean(finals):.1f} ± {np.std(finals):.1f}",
                      *[""] * len(thresholds), f"{np.mean(rates):.0f}", "")
    console.print(table)
    png = plot_learning_curves({e: [run_dir(out, env, e, s) for s in seeds] for e in encoders},
                               RESULTS / f"learning_{env}{tag}.png", title=f"{env}{tag}: deterministic evaluation return")
    summary["png"] = str(png.relative_to(ROOT.parent))
    stem = RESULTS / f"learning_{env}{tag}"
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1))
    Path(f"{stem}.md").write_text(markdown_table(summary))
    console.print(f"wrote {png}, {stem}.json and {stem}.md")
    return summary


def learn(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(e, s) for e in args.encoders for s in args.seeds]
    running: list[subprocess.Popen] = []
    start = time.perf_counter()
    for encoder, seed in jobs:
        if (run_dir(out, args.env, encoder, seed) / "checkpoint.pt").exists() and not args.force:
            console.print(f"{encoder} seed {seed}: already trained, reusing (pass --force to retrain)")
            continue
        while len(running) >= args.parallel:
            running = [p for p in running if p.poll() is None]
            time.sleep(2)
        console.print(f"start {args.env} {encoder} seed {seed}")
        running.append(launch(args.env, encoder, seed, args.steps, args.preset, out, args.set or []))
    for p in running:
        if p.wait() != 0:
            raise SystemExit(f"a training run failed: see the .log files in {out}")
    console.print(f"all runs done in {(time.perf_counter() - start) / 60:.1f} min")
    summarise(out, args.env, args.encoders, args.seeds, args.thresholds, args.tag)


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
            trainer.cfg.steps += steps
            t0 = time.perf_counter()
            trainer.train(show_progress=False)
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
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--set", action="append", help="extra config overrides for every run")
    p.add_argument("--thresholds", nargs="+", type=float, default=[-300.0, -200.0])
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--force", action="store_true")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the result files, e.g. _encoder_lr3e-4 for a variant")
    t = sub.add_parser("throughput")
    t.add_argument("--env", default="Pendulum-V")
    t.add_argument("--updates", type=int, default=100)
    t.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.command == "learn" and args.summary_only:
        summarise(Path(args.out), args.env, args.encoders, args.seeds, args.thresholds, args.tag)
    elif args.command == "learn":
        learn(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
