"""Key-to-Door credit-assignment benchmark: success rate over training, Mamba vs MLP context encoder.

    python benchmarks/keydoor.py --envs KeyToDoor-60 --encoders mamba mlp --seeds 0 1 --minutes 25

Every (env, encoder, seed) run trains as its own process (``resel train``, one torch thread) for
at most ``--steps`` environment steps or ``--minutes`` of wall time, whichever comes first
(a run over time is stopped; its metrics.csv holds every evaluation up to then), ``--parallel``
at a time. The evaluation success rate (door opened with the key, deterministic policy, fresh
episodes) is read from each run's metrics.csv; the summary (JSON) and the curves (PNG, mean and
min-max over seeds) go to benchmarks/results/keydoor_<env><tag>.{json,png}, with the success rate
of a uniformly random policy for reference. The machine's load average is recorded at the start
and the end (the CPU is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from training import RESULTS, launch, run_dir  # its sibling script (`python benchmarks/keydoor.py`)

from resel_train.nets.registry import ENCODER_NAMES

console = Console()
METRIC = "eval_success_rate"


def train_all(args: argparse.Namespace, out: Path) -> dict:
    """Run every job under the step and wall-time limits; returns wall times and how each run ended."""
    jobs = [(env, enc, seed) for seed in args.seeds for env in args.envs for enc in args.encoders]
    running: list[tuple[tuple, subprocess.Popen, float]] = []
    ended: dict[str, dict] = {}

    def reap(force: bool) -> None:
        for job, proc, started in list(running):
            over = time.perf_counter() - started > args.minutes * 60
            if proc.poll() is None and (over or force):
                proc.send_signal(signal.SIGTERM)
                proc.wait()
                how = "stopped at the time limit"
            elif proc.poll() is None:
                continue
            else:
                how = "finished" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
            ended["_".join(map(str, job))] = {"how": how, "wall_min": (time.perf_counter() - started) / 60}
            running.remove((job, proc, started))

    for env, encoder, seed in jobs:
        while len(running) >= args.parallel:
            reap(force=False)
            time.sleep(5)
        console.print(f"start {env} {encoder} seed {seed}")
        extra = [f"eval_every={args.eval_every}", f"eval_episodes={args.eval_episodes}", *(args.set or [])]
        running.append(((env, encoder, seed), launch(env, encoder, seed, args.steps, args.preset, out, extra),
                        time.perf_counter()))
    while running:
        reap(force=False)
        time.sleep(5)
    return ended


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


def summarise(args: argparse.Namespace, out: Path, env: str, ended: dict, load: dict) -> dict:
    from resel_train.logger import plot_learning_curves, read_metrics

    summary: dict = {"env": env, "preset": args.preset, "metric": METRIC, "eval_episodes": args.eval_episodes,
                     "limits": {"steps": args.steps, "minutes": args.minutes}, "load_average": load,
                     "random_policy_success_rate": random_success_rate(env), "encoders": {}}
    table = Table("encoder", "seed", "env steps", "first eval", "best eval", "final (last 3)", "wall (min)", "ended")
    for encoder in args.encoders:
        finals, per_seed = [], {}
        for seed in args.seeds:
            rows = [r for r in read_metrics(run_dir(out, env, encoder, seed)) if METRIC in r]
            steps = [int(r["step"]) for r in rows]
            rates = [r[METRIC] for r in rows]
            final = float(np.mean(rates[-3:])) if rates else float("nan")
            finals.append(final)
            end = ended.get(f"{env}_{encoder}_{seed}", {})
            per_seed[seed] = {"steps": steps, "success_rate": rates, "final": final, **end,
                              "steps_per_s": rows[-1].get("steps_per_s") if rows else None}
            table.add_row(encoder, str(seed), str(steps[-1] if steps else 0), f"{rates[0]:.2f}" if rates else "-",
                          f"{max(rates):.2f}" if rates else "-", f"{final:.2f}",
                          f"{end.get('wall_min', float('nan')):.1f}", end.get("how", "?"))
        summary["encoders"][encoder] = {"final_mean": float(np.mean(finals)), "final_std": float(np.std(finals)),
                                        "seeds": per_seed}
    console.print(table)
    console.print(f"a uniformly random policy succeeds in {summary['random_policy_success_rate']:.1%} of episodes")
    stem = f"keydoor_{env}{args.tag}"
    png = plot_learning_curves({e: [run_dir(out, env, e, s) for s in args.seeds] for e in args.encoders},
                               RESULTS / f"{stem}.png", metric=METRIC,
                               title=f"{env} ({args.preset} preset): evaluation success rate")
    summary["png"] = str(png.relative_to(RESULTS.parent.parent))
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    console.print(f"wrote {png} and {RESULTS / f'{stem}.json'}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["KeyToDoor-60"])
    parser.add_argument("--encoders", nargs="+", default=["mamba", "mlp"], choices=ENCODER_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-time limit of each run")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--set", action="append", help="extra config overrides for every run")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default="runs/keydoor")
    parser.add_argument("--tag", default="")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    load = {"start": os.getloadavg(), "cpus": os.cpu_count()}
    ended = {} if args.summary_only else train_all(args, out)
    ended_path = out / "ended.json"
    if ended:
        ended_path.write_text(json.dumps(ended, indent=1))
    elif ended_path.exists():
        ended = json.loads(ended_path.read_text())
    load["end"] = os.getloadavg()
    for env in args.envs:
        previous = RESULTS / f"keydoor_{env}{args.tag}.json"
        if args.summary_only and previous.exists():  # keep the load measured while the runs trained
            load = json.loads(previous.read_text()).get("load_average", load)
        summarise(args, out, env, ended, load)


if __name__ == "__main__":
    main()
