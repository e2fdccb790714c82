"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from resel_train.persist.crashpoint import crash_point

TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"\.[0-9a-f]{16}\.tmp$")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object] | bytes) -> None:
    """Write via a temp file in the same folder, fsync it, rename it over ``path``, fsync the folder.

    ``write`` is the bytes to write or a function that writes into the open file. The temp file is
    created with mode 0666 minus the umask (what ``open()`` gives), not mkstemp's 0600, and is
    named ``<name>.<16 hex>.tmp`` so :func:`remove_temp_files` can find what a killed write left.
    Any disk error (full disk, quota, I/O error) leaves ``path`` as it was and raises ``OSError`` naming ``path``,
    even when the writer wrapped it in its own exception type.
    Crash points (see :mod:`resel_train.persist.crashpoint`): ``<name>:partial`` (payload handed over but
    not flushed), ``<name>:synced`` (complete temp file, before the rename), ``<name>:renamed``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            crash_point(f"{path.name}:partial")
            f.flush()
            os.fsync(f.fileno())
        crash_point(f"{path.name}:synced")
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        os_error = _os_error_under(exc)
        if os_error is None:
            raise
        raise OSError(os_error.errno, os_error.strerror or str(os_error), str(path)) from exc
    crash_point(f"{path.name}:renamed")
    fsync_dir(path.parent)


def _os_error_under(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write, also when a serialiser wrapped it (torch.save turns a full disk into
    "[enforce fail at inline_container.cc] unexpected pos"), so callers see one kind of error for any disk problem."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def fsync_dir(folder: Path) -> None:
    """Make renames and unlinks in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files that killed :func:`atomic_write` calls left in ``folder``; returns them."""
    removed = [p for p in folder.iterdir() if p.is_file() and _TEMP_RE.search(p.name)]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
