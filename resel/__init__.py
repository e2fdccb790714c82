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
import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Any

import resel_train.envs  # noqa: F401  (registers the resel/<id>-v0 Gymnasium ids; torch-free)
from resel_deploy.lazy import lazy_exports

# ``resel.export`` and ``resel.cli`` live in the repository's top-level export/ and cli/ folders; an installed
# wheel puts them under resel/ (pyproject's package-dir). In a source checkout exactly these two resolve from
# the root next to this package (whichever checkout was imported, also through PYTHONPATH); nothing else of
# the root becomes reachable under ``resel.``.
_ROOT = Path(__file__).resolve().parent.parent
_CHECKOUT_SUBPACKAGES = {"resel.export": _ROOT / "export", "resel.cli": _ROOT / "cli"}


class _CheckoutSubpackages(importlib.abc.MetaPathFinder):
    """Finds ``resel.export`` / ``resel.cli`` in this package's source checkout, and nothing else."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        folder = _CHECKOUT_SUBPACKAGES.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


if (_ROOT / "pyproject.toml").is_file() and all((d / "__init__.py").is_file() for d in _CHECKOUT_SUBPACKAGES.values()):
    sys.meta_path.insert(0, _CheckoutSubpackages())

_EXPORTS = {
    "RESeL": "resel.api",
    "BaseCallback": "resel_train.callbacks",
    "CallbackList": "resel_train.callbacks",
    "CheckpointCallback": "resel_train.callbacks",
    "EvalCallback": "resel_train.callbacks",
    "EvalResult": "resel_train.evaluator",
    "StopTrainingOnRewardThreshold": "resel_train.callbacks",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
