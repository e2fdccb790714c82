"""Ctrl-C and SIGTERM while training: finish the step, save, then raise :class:`TrainingInterrupted`."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a save; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: Path, step: int) -> None:
        self.signum, self.checkpoint, self.step = signum, checkpoint, step
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name} at step {step}: saved {checkpoint}")


class StopOnSignals:
    """While training: the first SIGINT/SIGTERM is recorded in ``received`` (the loop stops after its step and
    saves); a second one stops the process at once (saves are atomic, so that loses at most that last save),
    after printing ``kept()``, what the run folder keeps. Only installed from the main thread (Python delivers
    signals there)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, kept: Callable[[], str]) -> None:
        self.kept = kept
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            name = signal.Signals(signum).name
            os.write(2, f"second {name}: stopping at once; {self.kept()}; continue it with --resume\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.received = signum

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
