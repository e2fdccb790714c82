"""A network's optimiser groups, on a CPU with each group's parameters and gradients laid end to end.

Why: an update steps two networks of ~50 tensors each, and on a CPU every per-tensor piece of
that bookkeeping is an op dispatched on its own: AdamW's step counters, zeroing the gradients,
the target network's Polyak average and the gradient norm came to ~600 small ops per update.
With each group's parameters as views of one buffer (and their gradients as views of another,
which autograd accumulates into in place), each of those is one op per group. The modules keep
their parameters (same names, shapes and state dicts); only where their values live changes.

On CUDA the groups stay per parameter: the update is replayed as CUDA graphs there, so the op
count costs nothing, and cuDNN's GRU and LSTM keep their weights in a layout of their own.
The optimiser's state is saved in whichever layout the run had; :func:`fit_optimizer_state`
re-lays a saved state for the optimiser at hand, so runs resume across devices and versions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ParamGroups:
    """Optimiser groups of one network (``groups``: dicts with ``params``, as ``torch.optim`` takes them).

    ``flat``: lay each group out as one buffer (see the module docstring); ``grads``: give the flat
    buffers gradient buffers (False for a target network, which is never trained directly).
    """

    def __init__(self, groups: list[dict], flat: bool, grads: bool = True) -> None:
        self.flat = flat
        self.sizes = [[p.numel() for p in g["params"]] for g in groups]  # per parameter, for fit_optimizer_state
        self.groups = [dict(g, params=[_flatten(g["params"], grads)] if flat else list(g["params"])) for g in groups]
        self.tensors: list[Tensor] = [t for g in self.groups for t in g["params"]]  # what the optimiser steps

    def zero_grad(self) -> None:
        """Gradients to zero (flat: in place, the buffers stay) or to None (per parameter)."""
        if self.flat:
            torch._foreach_zero_([t.grad for t in self.tensors])
        else:
            for t in self.tensors:
                t.grad = None

    def grad_norm(self) -> Tensor:
        """Global L2 norm of the network's gradients, on the device (for logging and the divergence guard).

        One norm of the gradients laid end to end (``get_total_norm``'s per-tensor norms, moves and
        stack cost ~140 small ops per network on a CPU). Zero when no gradient reached the network.
        """
        grads = [t.grad.reshape(-1) for t in self.tensors if t.grad is not None]
        if not grads:
            return torch.zeros((), device=self.tensors[0].device)
        return torch.linalg.vector_norm(torch.cat(grads)).detach()


def _flatten(params: list[nn.Parameter], grads: bool) -> Tensor:
    """One buffer holding ``params`` end to end, each parameter re-pointed to its slice (and its grad too)."""
    buffer = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros_like(buffer) if grads else None
    offset = 0
    for p in params:
        n = p.numel()
        p.data = buffer[offset:offset + n].view_as(p)
        if grad is not None:
            p.grad = grad[offset:offset + n].view_as(p)
        offset += n
    buffer.grad = grad
    return buffer


def fit_optimizer_state(saved: dict, optimizer: torch.optim.Optimizer, params: ParamGroups) -> dict:
    """``saved`` (an AdamW ``state_dict``, per-parameter or flat groups) re-laid for ``optimizer`` over ``params``.

    A state of the same layout is returned as it is. Otherwise, per group, the moments are laid
    end to end in the order of the group's parameters (the order of both layouts), a parameter
    without state yet counting as zeros, and cut to the tensors the optimiser holds, and the
    group shares one step count. That is exact when every parameter of a group has been stepped
    as often, as in the RESeL update, where every parameter gets a gradient at every step.
    """
    if all(len(s["params"]) == len(g["params"]) for s, g in zip(saved["param_groups"], optimizer.param_groups)):
        return saved
    state, groups, index = {}, [], 0
    for saved_group, group, sizes in zip(saved["param_groups"], optimizer.param_groups, params.sizes, strict=True):
        targets = group["params"]
        ids = list(range(index, index + len(targets)))
        index += len(targets)
        groups.append(dict(saved_group, params=ids))
        entries = [saved["state"].get(i) for i in saved_group["params"]]
        if not any(entries):
            continue
        if len(entries) != len(sizes):  # saved flat: one entry of the whole group
            sizes = [sum(sizes)]
        first = next(e for e in entries if e)
        for i in ids:
            state[i] = {"step": first["step"].clone()}
        for key in ("exp_avg", "exp_avg_sq"):
            laid = torch.cat([e[key].reshape(-1) if e else first[key].new_zeros(n) for e, n in zip(entries, sizes)])
            if laid.numel() != sum(t.numel() for t in targets):
                raise ValueError(f"the saved optimiser state holds {laid.numel()} values for a group of "
                                 f"{sum(t.numel() for t in targets)} (a checkpoint of another model)")
            for i, piece, t in zip(ids, torch.split(laid, [t.numel() for t in targets]), targets):
                state[i][key] = piece.reshape(t.shape).clone()
    return {"state": state, "param_groups": groups}
