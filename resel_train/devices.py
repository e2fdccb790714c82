"""The torch device a config's ``device`` names (refused with a one-line reason when this machine lacks it),
and the process-wide torch settings of a training run."""

from __future__ import annotations

import ctypes
import os

import torch

from resel_train.config import TrainConfig


def configure_torch(cfg: TrainConfig) -> torch.device:
    """Set torch's thread count (``cfg.threads``; 0 keeps torch's) and global seed; returns the run's device.

    On a CPU the heap also keeps freed memory for reuse (:func:`retain_freed_memory`)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        retain_freed_memory()
    return device


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Make glibc's malloc keep freed memory for reuse, instead of handing it back to the OS; False where
    the C library is not glibc (nothing changes there).

    Why: an update allocates and frees the same tensors of a few hundred KB every time. With glibc's
    defaults such blocks come from fresh mmaps or a heap top that is trimmed when they are freed, so
    every update page-faults them in again: hundreds of faults per update at a few microseconds each.
    Blocks below ``mmap_threshold`` now come from the heap, and up to ``trim_threshold`` of free heap
    is kept. Process-wide; set once per training process.
    """
    try:  # the running C library's own name and symbols: no file scan or ldconfig call at start-up
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):  # no confstr name, no mallopt symbol: not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda[:N]`` only if that GPU exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for but torch sees no CUDA GPU; use --device cpu or auto")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 ...)")
    return torch.device(name)
