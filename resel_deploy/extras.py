"""The install hint of each optional extra, defined once: every "needs X" error uses :func:`install_hint`.

Torch-free and dependency-free, so a controller on a robot can import it. The extras themselves are in
pyproject.toml's ``[project.optional-dependencies]`` (a test checks the two agree).
"""

from __future__ import annotations

# extra -> what it adds, as shown after the pip command
EXTRAS: dict[str, str] = {
    "train": "torch, gymnasium, tensorboard, matplotlib: training",
    "deploy": "onnxruntime: run an exported .onnx policy, no torch",
    "onnx": "onnx, onnxruntime, onnxscript: export to ONNX",
    "sim": "MuJoCo and PyBullet: the simulated tasks",
    "ray": "Ray: resel sweep",
    "triton": "Triton: the GPU scan kernel; CUDA machine",
    "mamba": "mamba-ssm: the reference CUDA kernels; CUDA machine, add --no-build-isolation",
    "tensorrt": "TensorRT: engines; NVIDIA GPU and a CUDA build of torch",
    "wandb": "Weights & Biases: logger.wandb=true",
}


def install_hint(extra: str) -> str:
    """``pip install 'resel[<extra>]' (what it adds)``: the one line telling a user how to get ``extra``."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; extras: {sorted(EXTRAS)}")
    return f"pip install 'resel[{extra}]' ({EXTRAS[extra]})"
