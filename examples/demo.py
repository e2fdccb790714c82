"""The main job: a short real run that shows learning, then export and the constant-time controller.

    python examples/demo.py                      # Pendulum-P, 8000 env steps, CPU preset (a few minutes on 2 cores)
    python examples/demo.py --steps 12000 --out runs/demo

Pendulum-P observes only the pole's angle (cos, sin), not its velocity, so the policy has to infer
the velocity from the history: a task for the recurrent context encoder. The script

1. measures the untrained policy on held-out episodes,
2. trains with the API (``RESeL.learn``), evaluating every 2000 steps,
3. measures the trained policy the same way,
4. exports it to ONNX (checked against torch before it is written) and runs that file with the
   onnxruntime controller against the simulator, printing its returns and per-step latency,
5. writes the learning curve to ``<out>/learning_curve.png``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from resel import RESeL
from resel_deploy.rollout import run_rollouts
from resel_experiments.plots import plot_runs
from resel_train.envs import make_env

ENV = "Pendulum-P"


def mean_return(model: RESeL, episodes: int, seed: int = 123) -> float:
    """Deterministic episodes of ``model.predict`` on fresh, seeded environments (the same for every call)."""
    env = make_env(ENV, split="test")
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        state, start, total, done = None, True, 0.0, False
        while not done:
            action, state = model.predict(obs, state, episode_start=start, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, start, done = total + float(reward), False, terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000, help="environment steps to train")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per before/after measurement")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    model = RESeL(ENV, preset="cpu", out=out)
    before = mean_return(model, args.episodes)
    print(f"untrained policy: mean return {before:.1f} over {args.episodes} episodes")
    model.learn(args.steps, progress_bar=True)
    after = mean_return(model, args.episodes)
    print(f"after {model.num_timesteps} steps: mean return {after:.1f} over {args.episodes} episodes "
          f"(change {after - before:+.1f})")

    report = model.export(out / "policy.onnx")
    print(f"exported {report.path}: max |onnx - torch| = {report.max_abs_error:.1e}")
    rollout = run_rollouts(report.path, ENV, args.episodes, backend="onnxruntime", seed=123)
    lat = rollout.latency_us
    print(f"onnxruntime controller: mean return {rollout.mean_return:.1f}; step latency p50 {lat['p50']:.0f} us, "
          f"p99 {lat['p99']:.0f} us")
    png = plot_runs({"mamba": [model.run_dir]}, out / "learning_curve.png", title=f"{ENV}, CPU preset")
    print(f"learning curve: {png}")


if __name__ == "__main__":
    main()
