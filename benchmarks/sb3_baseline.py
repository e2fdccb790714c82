"""SB3 SAC on the toolkit's tasks, evaluated the way ``resel train`` evaluates, written as run folders.

The baseline a user would pick instead: Stable-Baselines3's SAC with its defaults (MlpPolicy,
batch 256, one gradient step per env step, 100 random steps first), one torch thread, on the same
task objects (``gymnasium.make("resel/<id>-v0")``). Every ``--eval-every`` env steps it runs
``--eval-episodes`` deterministic episodes on the held-out split (``split="test"``), with the reset
seeds ``resel train`` uses (seed + 10000 + i), so the two are evaluated on the same episodes.

Each (task, seed) becomes a run folder ``<out>/<task>_sb3-sac_s<seed>/`` with a ``config.yaml``
(encoder ``sb3-sac``) and a ``metrics.csv`` in the toolkit's columns, so ``resel report <out>``
puts SB3 beside the RESeL runs of a ``resel sweep --out <out>``. It also writes the return of a
uniformly random policy on the same evaluation episodes (``random_returns.json``), the floor to read
the curves against. SB3 is an optional benchmark dependency (``pip install stable-baselines3``).

    python benchmarks/sb3_baseline.py --envs HopperBLT-V,WalkerBLT-P,Hopper-gravity --seeds 2 \\
        --steps 25000 --eval-every 2500 --eval-episodes 5 --out runs/tasks
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import yaml

import resel_train.envs  # noqa: F401  (registers the resel/<id>-v0 ids)

COLUMNS = ("step", "wall_s", "steps_per_s", "episodes", "train_return", "eval_return", "eval_return_std")


def evaluate(env: gym.Env, act, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std of the return of ``act(obs)`` over ``episodes`` episodes reset with seed + 10000 + i."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 10_000 + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def random_return(task: str, episodes: int, seed: int = 0) -> float:
    """The return of uniformly random actions on the evaluation episodes."""
    env = gym.make(f"resel/{task}-v0", split="test")
    env.action_space.seed(seed)
    return evaluate(env, lambda _obs: env.action_space.sample(), episodes, seed)[0]


def run_sb3(task: str, seed: int, steps: int, eval_every: int, eval_episodes: int, run_dir: Path) -> None:
    """Train SB3 SAC on ``task`` for ``steps`` env steps, logging an evaluation every ``eval_every`` steps."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    if (run_dir / "metrics.csv").exists():
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        if rows and int(float(rows[-1]["step"])) >= steps:
            print(f"{run_dir.name}: done already, skipped")
            return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "env": task, "seed": seed, "steps": steps, "eval_every": eval_every, "eval_episodes": eval_episodes,
        "model": {"encoder": "sb3-sac"},
        "baseline": "stable-baselines3 SAC, MlpPolicy, default hyperparameters, 1 torch thread",
    }, sort_keys=False))
    env = gym.make(f"resel/{task}-v0")
    eval_env = gym.make(f"resel/{task}-v0", split="test")
    model = SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    start = time.perf_counter()
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()

        class Evaluate(BaseCallback):
            def _on_step(self) -> bool:
                if self.num_timesteps % eval_every == 0 or self.num_timesteps == steps:
                    mean, std = evaluate(eval_env, lambda o: model.predict(o, deterministic=True)[0],
                                         eval_episodes, seed)
                    wall = time.perf_counter() - start
                    recent = [ep["r"] for ep in model.ep_info_buffer] if model.ep_info_buffer else []
                    writer.writerow({"step": self.num_timesteps, "wall_s": round(wall, 2),
                                     "steps_per_s": self.num_timesteps / wall, "episodes": model._episode_num,
                                     "train_return": float(np.mean(recent)) if recent else "",
                                     "eval_return": mean, "eval_return_std": std})
                    f.flush()
                    print(f"{run_dir.name}: step {self.num_timesteps}  eval {mean:.1f}  "
                          f"{self.num_timesteps / wall:.0f} steps/s", flush=True)
                return True

        model.learn(steps, callback=Evaluate())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", required=True, help="task ids, comma-separated")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1")
    parser.add_argument("--steps", type=int, default=25_000)
    parser.add_argument("--eval-every", type=int, default=2500)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--out", default="runs/tasks", help="folder of run folders (a resel sweep's --out)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t.strip() for t in args.envs.split(",") if t.strip()]
    randoms = {task: random_return(task, args.eval_episodes) for task in tasks}
    (out / "random_returns.json").write_text(json.dumps(randoms, indent=1) + "\n")
    print("random-policy return:", randoms)
    for task in tasks:
        for seed in range(args.seeds):
            run_sb3(task, seed, args.steps, args.eval_every, args.eval_episodes, out / f"{task}_sb3-sac_s{seed}")


if __name__ == "__main__":
    main()
