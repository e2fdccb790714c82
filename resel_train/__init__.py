"""RESeL training side: the sequence core, networks, replay, algorithm and trainer."""

from resel_train.ops.scan import selective_scan

__all__ = ["selective_scan"]
__version__ = "0.1.0"
