"""The crash seam of the persistence code: named points inside every atomic write and save.

Production code calls :func:`crash_point` at each point; it does nothing unless a hook was installed with
:func:`install` (one module-global read: no environment lookup, nothing configurable from outside the
process). The crash-safety tests install a hook that SIGKILLs the process at a chosen point
(``tests/crash_hook.py``) and prove that a kill at exactly that moment loses nothing. The points:
``<file name>:partial`` (payload handed over, not flushed), ``<file name>:synced`` (complete temp file,
before the rename), ``<file name>:renamed`` (see :func:`~resel_train.persist.atomic.atomic_write`) and
``unit:committed`` (a new checkpoint + replay unit in place, the old replay not yet removed).
"""

from __future__ import annotations

from collections.abc import Callable

CrashHook = Callable[[str], None]
_hook: CrashHook | None = None


def crash_point(name: str) -> None:
    """Give the installed hook (if any) the chance to stop the process at point ``name``."""
    if _hook is not None:
        _hook(name)


def install(hook: CrashHook | None) -> CrashHook | None:
    """Call ``hook(name)`` at every crash point from now on (None: remove it); returns the previous hook."""
    global _hook
    previous, _hook = _hook, hook
    return previous
