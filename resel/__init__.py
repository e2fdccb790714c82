"""RESeL in the Stable-Baselines3 style: ``from resel import RESeL``.

    model = RESeL("Pendulum-P", preset="cpu")
    model.learn(8000)
    model.save("p.pt")

``import resel`` registers every task with Gymnasium (``gymnasium.make("resel/Pendulum-P-v0",
split="test")``). Names are imported lazily (PEP 562), so ``import resel`` and its torch-free
subpackages never load torch by themselves; ``resel.RESeL`` and the callbacks do, on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import resel_train.envs  # noqa: F401  (registers the resel/<id>-v0 Gymnasium ids; torch-free)

# ``resel.export`` and ``resel.cli`` live in the repository's top-level export/ and cli/ folders; an installed
# wheel puts them under resel/ (pyproject's package-dir). In a source checkout (run with PYTHONPATH or
# installed editable), let the subpackages resolve from the root.
_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "export" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # noqa: F821  (the package's own search path)

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
