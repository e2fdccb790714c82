#!/usr/bin/env bash
# The main job: set up .venv if needed, then a short, real run that shows learning (Pendulum-P, where only
# the pole's angle is observed), export to ONNX, the onnxruntime controller against the simulator, and
# the learning-curve PNG (examples/demo.py; a few minutes on 2 cores). STEPS / OUT change length and folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup_env.sh
python examples/demo.py --steps "${STEPS:-8000}" --out "${OUT:-runs/demo}"
