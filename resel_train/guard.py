"""Divergence guard: stop a run at the first non-finite loss, gradient norm or parameter.

``observe`` is called after every update and only queues a device-side ``isfinite`` of the
update's metrics (no host sync, so it costs nothing on a GPU); ``check`` syncs once, names the
first update that went bad and scans the parameters. The trainer checks at every log point, before
every save (so a bad state is never written over a good checkpoint), and when the loop raises.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite quantity; ``step`` and ``quantity`` say where and what."""

    def __init__(self, step: int, quantity: str, detail: str) -> None:
        super().__init__(f"training diverged at step {step}: {quantity} is {detail}")
        self.step, self.quantity = step, quantity


class DivergenceGuard:
    """Watches update metrics (floats or 0-d tensors) and the parameters of ``modules``."""

    def __init__(self, modules: Mapping[str, nn.Module], extra: Mapping[str, torch.Tensor]) -> None:
        self.modules, self.extra = modules, extra
        self._pending: list[tuple[int, list[str], torch.Tensor]] = []

    def observe(self, step: int, metrics: Mapping[str, float | torch.Tensor]) -> None:
        """Queue this step's metrics; they are checked for NaN/inf on the next :meth:`check` (no host sync now)."""
        if not metrics:
            return
        names = list(metrics)
        values = [v.detach().reshape(()).float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                  for v in metrics.values()]
        device = values[0].device
        self._pending.append((step, names, torch.isfinite(torch.stack([v.to(device) for v in values]))))

    def check(self, step: int) -> None:
        """Raise :class:`TrainingDiverged` if any observed metric or any parameter is non-finite."""
        pending, self._pending = self._pending, []
        if pending:
            flags = torch.cat([f.to(pending[0][2].device) for _, _, f in pending]).cpu()  # one host sync
            if not bool(flags.all()):
                offset = 0
                for at, names, _ in pending:
                    ok = flags[offset:offset + len(names)]
                    offset += len(names)
                    if not bool(ok.all()):
                        bad = names[int((~ok).nonzero()[0])]
                        raise TrainingDiverged(at, bad, f"NaN or inf (in the update at step {at}; checked at step {step})")
        bad_param = self._first_nonfinite_parameter()
        if bad_param is not None:
            raise TrainingDiverged(step, f"parameter {bad_param}", "NaN or inf")

    def _first_nonfinite_parameter(self) -> str | None:
        named = [(f"{m}.{n}", p) for m, mod in self.modules.items() for n, p in mod.named_parameters()]
        named += list(self.extra.items())
        if not named:
            return None
        device = named[0][1].device
        ok = torch.stack([torch.isfinite(p.detach()).all().to(device) for _, p in named]).cpu()  # one host sync
        if bool(ok.all()):
            return None
        return named[int((~ok).nonzero()[0])][0]

