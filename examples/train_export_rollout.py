"""Train -> export -> rollout from Python, the way a script or notebook-free pipeline would do it.

    python examples/train_export_rollout.py --steps 3000 --out runs/example

1. trains RESeL on Pendulum-V with the 2-core CPU preset (a short run: raise --steps to learn more);
2. exports the policy to one ONNX file, checked against torch before it is written;
3. runs the ONNX controller against the simulator and prints returns and per-step latency.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.onnx import export_onnx
from resel_deploy.rollout import run_rollouts
from resel_train.config import resolve_config
from resel_train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-V")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default="runs/example")
    args = parser.parse_args()

    cfg = resolve_config(args.env, preset="cpu", steps=args.steps, out=args.out)
    trainer = Trainer(cfg, resume=(Path(args.out) / f"{args.env}_mamba_s0" / "checkpoint.pt").exists())
    trainer.train()
    checkpoint = trainer.run_dir / "checkpoint.pt"

    report = export_onnx(checkpoint, trainer.run_dir / "policy.onnx")
    print(f"exported {report.path} (opset {report.opset}); max |onnx - torch| = {report.max_abs_error:.2e}")

    rollout = run_rollouts(report.path, args.env, episodes=3, backend="onnxruntime")
    print(f"returns {[round(r, 1) for r in rollout.returns]}; controller step latency (us): {rollout.latency_us}")


if __name__ == "__main__":
    main()
