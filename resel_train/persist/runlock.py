"""One process per run folder: an advisory ``flock`` on ``<run>/run.lock`` that names its holder.

The kernel drops a flock when its holder dies, however it dies, so a lock left by a killed process
is stale by construction: the next process simply takes it over (and says whose it was). The file
itself stays in the folder (deleting it while others may open it would let two processes hold
different inodes); only the lock on it matters.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = "run.lock"


class RunLocked(RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """Held from :meth:`acquire` until :meth:`release` (or until the process exits).

    ``name`` and ``why`` serve other one-writer folders (a sweep's driver: ``sweep.lock``); ``why`` ends the
    refusal message, saying what two writers would break.
    """

    def __init__(self, run_dir: Path, name: str = LOCK_FILE,
                 why: str = "two processes on one run folder would overwrite each other's checkpoints") -> None:
        self.path = Path(run_dir) / name
        self.why = why
        self._fd: int | None = None
        self.previous_holder: str | None = None  # set when a stale lock of a dead process was taken over

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLocked` naming the holder; a dead holder's lock is taken over."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by {holder}; wait for it to finish or stop it ({self.why})"
            ) from None
        old = os.pread(fd, 200, 0).decode(errors="replace").strip()
        self.previous_holder = old or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (safe to call twice); the kernel drops it too if the process dies."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def __del__(self) -> None:
        self.release()
