"""RESeL training side: the sequence core, networks, replay, algorithm and trainer.

Importing it registers every task with Gymnasium as ``resel/<id>-v0`` (see :mod:`resel_train.envs`);
``selective_scan`` is imported on first use, so ``import resel_train`` alone does not load torch.
"""

from __future__ import annotations

from typing import Any

from resel_train import envs as _envs  # noqa: F401  (registers the Gymnasium ids; torch-free)

__all__ = ["selective_scan"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "selective_scan":
        from resel_train.ops.scan import selective_scan

        return selective_scan
    raise AttributeError(f"module 'resel_train' has no attribute {name!r}")
