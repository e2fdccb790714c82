"""Key-to-Door credit-assignment benchmark: success rate over training, Mamba vs MLP context encoder.

    python benchmarks/keydoor.py --envs KeyToDoor-60 --encoders mamba mlp --seeds 2 --steps 60000

A ``resel sweep`` (one trial per task, encoder and seed, one torch thread each, ``--parallel`` at a
time; rerun the same command to resume) followed by ``resel report --metric eval_success_rate``:
the evaluation success rate (door opened with the key, deterministic policy, fresh episodes) as
mean ± standard error over seeds, and the curves, go to benchmarks/results/keydoor_<tag>/, with the
success rate of a uniformly random policy (the chance level) in chance.json. The machine's load
average is recorded at the start and the end (the CPU is shared).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from rich.console import Console

from resel_train.nets.registry import ENCODER_NAMES

RESULTS = Path(__file__).resolve().parent / "results"
METRIC = "eval_success_rate"
console = Console()


def random_success_rate(env_id: str, episodes: int = 1000, seed: int = 0) -> float:
    """Fraction of episodes a uniformly random policy ends with the door opened (the chance level)."""
    from resel_train.envs import make_env

    env, rng, wins = make_env(env_id, seed=seed), np.random.default_rng(seed), 0
    for i in range(episodes):
        env.reset(seed=seed + i)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
            done = terminated or truncated
        wins += bool(info["success"])
    return wins / episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["KeyToDoor-60"])
    parser.add_argument("--encoders", nargs="+", default=["mamba", "mlp"], choices=ENCODER_NAMES)
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1 per task and encoder")
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--set", action="append", help="extra config overrides for every run")
    parser.add_argument("--parallel", type=int, default=2, help="trials at a time (CPUs of the local Ray instance)")
    parser.add_argument("--out", default="runs/keydoor", help="the sweep folder")
    parser.add_argument("--tag", default="", help="suffix of the result folder")
    parser.add_argument("--summary-only", action="store_true", help="report the sweep folder without training")
    args = parser.parse_args()
    from resel_experiments.report import markdown_table, write_report

    out, results = Path(args.out), RESULTS / f"keydoor{args.tag}"
    load = {"start": os.getloadavg(), "cpus": os.cpu_count()}
    if not args.summary_only:
        from resel_experiments.runner import SweepOptions, run_sweep
        from resel_experiments.sweep import SweepGrid

        overrides = [f"eval_every={args.eval_every}", f"eval_episodes={args.eval_episodes}", *(args.set or [])]
        grid = SweepGrid(envs=args.envs, seeds=args.seeds, encoders=args.encoders, preset=args.preset,
                         steps=args.steps, overrides=overrides)
        run_sweep(out, grid, SweepOptions(num_cpus=args.parallel))
    load["end"] = os.getloadavg()
    marks = sorted({args.steps // 4, args.steps // 2, args.steps})
    report = write_report(out, marks, results, metric=METRIC)
    chance = {env: random_success_rate(env) for env in args.envs}
    (results / "chance.json").write_text(json.dumps({"random_policy_success_rate": chance,
                                                     "load_average": load}, indent=1) + "\n")
    console.print(markdown_table(report), markup=False, highlight=False, soft_wrap=True)
    for env, rate in chance.items():
        console.print(f"{env}: a uniformly random policy succeeds in {rate:.1%} of episodes")
    console.print(f"wrote {report.markdown}, {report.csv}, {results / 'chance.json'} and the plots")


if __name__ == "__main__":
    main()
