#!/usr/bin/env bash
# The main job: set up .venv if needed, then a short, real train -> export -> controller run on the
# default small task (Pendulum-V: only the angular velocity is observed, so the policy needs memory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup_env.sh
OUT="${OUT:-runs/demo}"
STEPS="${STEPS:-3000}"
rm -rf "$OUT"
resel train --env Pendulum-V --preset cpu --steps "$STEPS" --out "$OUT"
CKPT="$OUT/Pendulum-V_mamba_s0/checkpoint.pt"
resel export "$CKPT" --format onnx --out "$OUT/policy.onnx"
resel rollout "$OUT/policy.onnx" --env Pendulum-V --episodes 3 --backend onnxruntime
resel plot "$OUT/Pendulum-V_mamba_s0" --out "$OUT/learning_curve.png" --title "Pendulum-V, CPU preset"
