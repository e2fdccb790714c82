#!/usr/bin/env bash
# Create (or reuse) .venv with the CPU build of torch and the project installed editable.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (pip skips what is there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU wheel first: with torch already satisfied, nothing below can pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
# Extras: simulators, ONNX export/runtime, test tools, triton (its kernels are tested on the CPU
# in Triton's interpreter), ray (`resel sweep`) and wandb (tested offline). No package here needs a GPU.
# Reinstall only when the project's dependencies changed since the last install.
if [ ! -f .venv/.resel-installed ] || [ pyproject.toml -nt .venv/.resel-installed ]; then
  pip install -q -e ".[train,sim,onnx,dev,triton,ray,wandb]"
  touch .venv/.resel-installed
fi
