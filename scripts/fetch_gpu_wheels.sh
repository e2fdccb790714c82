#!/usr/bin/env bash
# Download the Python 3.12 manylinux wheels the GPU machine lacks (it has torch, triton, numpy, onnx,
# onnxruntime, pytest, typer, rich, tensorboard, matplotlib, pyyaml, cloudpickle, imageio, absl-py, but
# no network and no gymnasium / mujoco) into the git-ignored .whl/, for scripts/gpu_check.sh.
# PyBullet (too large to carry) and Ray stay behind: their tests skip there with the reason.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.0 mujoco-core==4.0.0 mujoco-studio==4.0.0 \
  glfw==2.11.0 pyopengl==3.1.10 websockets==17.4
du -sh .whl
