"""A check every context encoder's tests share: the O(1) step rolled over a sequence is the sequence form."""

import torch


def assert_step_matches_forward(enc, x: torch.Tensor, resets: torch.Tensor, state=None, tol: float = 1e-5) -> None:
    """``enc.step`` over every time step of ``x`` (from ``state``, or zeros) gives ``enc(x, resets, state)``:
    the outputs at every step and the final state."""
    y_seq, final = enc(x, resets, state)
    s, ys = (enc.initial_state(x.shape[0]) if state is None else state), []
    for t in range(x.shape[1]):
        y_t, s = enc.step(x[:, t], resets[:, t], s)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y_seq, rtol=tol, atol=tol)
    for a, b in zip(s, final, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
