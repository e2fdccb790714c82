"""Reset-aware complex diagonal linear scan: the recurrence of the resettable S5 layer.

    h_t = (1 - s_t) * a * h_{t-1} + b_t          a = exp(log_a) complex (P,), b_t complex (batch, P)

``s_t`` is 1 at the first step of a trajectory. This is the S5 paper's reset operator
(a_i, b_i, c_i) (+) (a_j, b_j, c_j) = (a_j, b_j, c_j) if c_j else (a_j a_i, a_j b_i + b_j, c_i) written
as the plain linear-recurrence operator on a_t = (1 - s_t) a: a zero decay at a reset discards all
that came before, exactly as the flag does, and keeps the operator associative.

The project's selective scan (:mod:`resel_train.ops.scan`) cannot run this: its decay exp(dt A) is
real. A is time-invariant here, so the product of the decays over any window (t - d, t] is
a^d when no reset falls inside it and 0 otherwise; the parallel form is therefore a log-depth
(Hillis-Steele) scan over time that only carries ``b`` and reads the window test off a running count
of resets: ceil(log2 L) whole-tensor steps, no per-step Python loop, differentiable by autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor


def s5_scan(log_a: Tensor, b: Tensor, resets: Tensor, h0: Tensor | None = None) -> Tensor:
    """All states h_t (batch, L, P) of the recurrence; ``log_a`` (P,) complex, ``b`` (batch, L, P)
    complex, ``resets`` (batch, L) bool/0-1, ``h0`` (batch, P) complex state before step 0 (zeros if None)."""
    _check(log_a, b, resets, h0)
    length = b.shape[1]
    keep = 1.0 - resets.to(log_a.real.dtype)
    if h0 is not None:  # fold the carried state into the first drive term
        first = b[:, :1] + (torch.exp(log_a) * keep[:, :1, None]) * h0[:, None]
        b = torch.cat([first, b[:, 1:]], dim=1)
    count = resets.to(torch.int64).cumsum(1)  # resets in [0, t]
    d = 1
    while d < length:
        # coefficient of h_{t-d} in h_t: a^d when no reset in (t - d, t], else 0
        no_reset = (count[:, d:] == count[:, :-d]).to(keep.dtype)
        coef = torch.exp(d * log_a) * no_reset[..., None]
        b = torch.cat([b[:, :d], b[:, d:] + coef * b[:, :-d]], dim=1)
        d *= 2
    return b


def s5_scan_loop(log_a: Tensor, b: Tensor, resets: Tensor, h0: Tensor | None = None) -> Tensor:
    """Reference: the recurrence in the module docstring, one step at a time."""
    _check(log_a, b, resets, h0)
    a = torch.exp(log_a)
    keep = 1.0 - resets.to(log_a.real.dtype)
    h = b.new_zeros(b.shape[0], b.shape[2]) if h0 is None else h0
    states = []
    for t in range(b.shape[1]):
        h = a * keep[:, t, None] * h + b[:, t]
        states.append(h)
    return torch.stack(states, dim=1)


def _check(log_a: Tensor, b: Tensor, resets: Tensor, h0: Tensor | None) -> None:
    if b.dim() != 3 or log_a.shape != b.shape[2:]:
        raise ValueError(f"b must be (batch, L, P) and log_a (P,); got {tuple(b.shape)} and {tuple(log_a.shape)}")
    if resets.shape != b.shape[:2]:
        raise ValueError(f"resets must be (batch, L) = {tuple(b.shape[:2])}; got {tuple(resets.shape)}")
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(f"h0 must be (batch, P) = {(b.shape[0], b.shape[2])}; got {tuple(h0.shape)}")
