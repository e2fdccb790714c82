"""Run the ``resel`` CLI with a crash hook installed: ``python tests/crash_hook.py POINT[@N] train ...``.

The process SIGKILLs itself the N-th time (default: the first) it reaches the crash point named POINT
(see resel_train/persist/crashpoint.py for the points), e.g. ``checkpoint.pt:synced@2``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

from resel_train.persist import crashpoint


def kill_at(target: str) -> crashpoint.CrashHook:
    """A hook that SIGKILLs this process at the ``n``-th arrival at point ``name`` (``target`` = ``name[@n]``)."""
    want, _, nth = target.partition("@")
    reached: Counter[str] = Counter()

    def hook(name: str) -> None:
        if name != want:
            return
        reached[name] += 1
        if reached[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    crashpoint.install(kill_at(sys.argv[1]))
    from resel.cli.main import app

    app(args=sys.argv[2:], prog_name="resel")
