"""RESeL in the Stable-Baselines3 style: ``from resel import RESeL``.

    model = RESeL("Pendulum-P", preset="cpu")
    model.learn(8000)
    model.save("p.pt")

Names are imported lazily (PEP 562), so ``import resel`` and its torch-free subpackages never load
torch by themselves; ``resel.RESeL`` and the callbacks do, on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RESeL": "resel.api",
    "BaseCallback": "resel_train.callbacks",
    "CallbackList": "resel_train.callbacks",
    "CheckpointCallback": "resel_train.callbacks",
    "EvalCallback": "resel_train.callbacks",
    "StopTrainingOnRewardThreshold": "resel_train.callbacks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'resel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
