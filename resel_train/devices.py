"""The torch device a config's ``device`` names (refused with a one-line reason when this machine lacks it),
and the process-wide torch settings of a training run."""

from __future__ import annotations

import torch

from resel_train.config import TrainConfig


def configure_torch(cfg: TrainConfig) -> torch.device:
    """Set torch's thread count (``cfg.threads``; 0 keeps torch's) and global seed; returns the run's device."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    return device


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda[:N]`` only if that GPU exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for but torch sees no CUDA GPU; use --device cpu or auto")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 ...)")
    return torch.device(name)
