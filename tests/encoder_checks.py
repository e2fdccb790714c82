"""Checks the context encoders' tests share: the O(1) step rolled over a sequence is the sequence form; a
sequence form equals its plain-loop reference in values and gradients; the reset cases of a test batch."""

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


def mixed_resets(length: int, generator: torch.Generator) -> torch.Tensor:
    """(5, length) resets, one case per row: none (pure continuation); at 0 plus random ones, incl.
    consecutive ones and a one-step trajectory; all; only at the last step; only at 0."""
    resets = torch.zeros(5, length, dtype=torch.bool)
    resets[1] = torch.rand(length, generator=generator) < 0.2
    resets[1, [0, 8, 9, 15]] = True
    resets[2] = True
    resets[3, -1] = True
    resets[4, 0] = True
    return resets


def assert_matches_reference(enc, reference, x: torch.Tensor, resets: torch.Tensor, state: tuple,
                             tol: float, seed: int = 2) -> None:
    """``enc(x, resets, state)`` equals ``reference(enc, x, resets, state)`` (both -> (y, final state
    tuple)) in the outputs, the final state and the gradients of a random linear loss with respect to
    ``x``, every initial state tensor and every parameter."""
    g = torch.Generator().manual_seed(seed)
    grad_y = torch.randn(*x.shape[:2], enc.out_dim, generator=g, dtype=x.dtype)
    grad_state = [torch.randn(s.shape, generator=g, dtype=x.dtype) for s in state]
    results = []
    for run in (enc, lambda *args: reference(enc, *args)):
        xl, sl = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state)
        enc.zero_grad(set_to_none=True)
        y, final = run(xl, resets, sl)
        loss = (y * grad_y).sum() + sum((f * w).sum() for f, w in zip(final, grad_state, strict=True))
        loss.backward()
        results.append([y, *final, xl.grad, *(s.grad for s in sl)] + [p.grad.clone() for p in enc.parameters()])
    names = (["y"] + [f"final state {i}" for i in range(len(state))] + ["grad x"]
             + [f"grad state {i}" for i in range(len(state))] + [n for n, _ in enc.named_parameters()])
    for name, got, want in zip(names, *results, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")
