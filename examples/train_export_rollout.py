"""Train -> export -> rollout from Python with the API, the way a script or notebook-free pipeline would do it.

    python examples/train_export_rollout.py --steps 8000 --out runs/example

1. trains RESeL with the 2-core CPU preset (run it again with a larger --steps to continue the run);
2. exports the policy to one ONNX file, checked against torch before it is written;
3. runs the ONNX controller against the simulator and prints returns and per-step latency.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resel import RESeL
from resel_deploy.rollout import run_rollouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-P")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--out", default="runs/example")
    args = parser.parse_args()

    existing = (Path(args.out) / f"{args.env}_mamba_s0" / "checkpoint.pt").exists()
    model = RESeL(args.env, preset="cpu", out=args.out, resume=existing)
    if model.run_timesteps < args.steps:  # --steps is the run's total, as in `resel train --steps`
        model.learn(args.steps - model.run_timesteps, progress_bar=True)
    last = model.trainer.last_evaluation
    print(f"trained {model.run_timesteps} steps in {model.run_dir}; last eval return {last.mean_return}")

    report = model.export(model.run_dir / "policy.onnx")
    print(f"exported {report.path} (opset {report.opset}); max |onnx - torch| = {report.max_abs_error:.2e}")

    rollout = run_rollouts(report.path, args.env, episodes=3, backend="onnxruntime")
    print(f"returns {[round(r, 1) for r in rollout.returns]}; controller step latency (us): {rollout.latency_us}")


if __name__ == "__main__":
    main()
