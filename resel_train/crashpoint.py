"""A named-crash hook for the crash-safety tests: SIGKILL this process at a chosen point of a save.

Set ``RESEL_CRASH_AT=<name>[@<n>]`` (e.g. ``checkpoint.pt:synced@2``) and the process kills itself
the ``n``-th time (default the first) it reaches ``crash_point(<name>)``. Unset, a call costs one
dictionary lookup. A test can then prove that a kill at exactly that moment loses nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV_VAR = "RESEL_CRASH_AT"
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL the process here when ``RESEL_CRASH_AT`` names this point (and this occurrence)."""
    target = os.environ.get(ENV_VAR)
    if not target:
        return
    want, _, nth = target.partition("@")
    if want != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
