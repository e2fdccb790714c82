#!/usr/bin/env bash
# One device call: the whole test suite on the GPU, then benchmarks/gpu.py; everything lands in $OUT.
# Run scripts/fetch_gpu_wheels.sh first on the workstation, then, through the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed: run scripts/fetch_gpu_wheels.sh first"; exit 2; }
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 MUJOCO_GL=egl
{ nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
timeout 300 python3 -m pytest -q -p no:cacheprovider --junitxml="$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.log" | tail -25
timeout 200 python3 benchmarks/gpu.py --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
