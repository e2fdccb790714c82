"""Causal depthwise conv with resets, against a per-trajectory plain loop."""

import pytest
import torch

from resel_train.ops import cpu_kernel
from resel_train.ops.conv import causal_conv1d, causal_conv1d_step


def loop_reference(x, weight, bias, reset, initial_state):
    """y_t = sum_j w_j x_{t-(k-1)+j} over taps inside the current trajectory (initial window before any reset)."""
    batch, dim, length = x.shape
    k = weight.shape[1]
    y = torch.zeros_like(x)
    for b in range(batch):
        history = list(initial_state[b].unbind(-1))  # k-1 earlier inputs
        for t in range(length):
            if reset[b, t]:
                history = [torch.zeros(dim, dtype=x.dtype)] * (k - 1)
            window = history + [x[b, :, t]]
            y[b, :, t] = sum(weight[:, j] * window[j] for j in range(k)) + bias
            history = window[1:]
    return y


def make(batch=3, dim=4, length=29, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    weight = torch.randn(dim, k, generator=g, dtype=torch.float64)
    bias = torch.randn(dim, generator=g, dtype=torch.float64)
    init = torch.randn(batch, dim, k - 1, generator=g, dtype=torch.float64)
    reset = torch.zeros(3, length, dtype=torch.bool)
    reset[0, 0] = True
    reset[1, [5, 6, length - 1]] = True
    reset[2, 3] = True
    return x, weight, bias, init, reset[:batch]


def test_sequence_form_matches_loop():
    x, weight, bias, init, reset = make()
    y, _ = causal_conv1d(x, weight, bias, reset, init)
    torch.testing.assert_close(y, loop_reference(x, weight, bias, reset, init))


def test_step_form_matches_sequence_form_and_final_window():
    x, weight, bias, init, reset = make()
    y_seq, final = causal_conv1d(x, weight, bias, reset, init)
    window, ys = init, []
    for t in range(x.shape[-1]):
        y_t, window = causal_conv1d_step(x[:, :, t], window, weight, bias, reset[:, t])
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, -1), y_seq)
    torch.testing.assert_close(window, final)


def test_split_calls_equal_one_call_and_short_sequences():
    x, weight, bias, init, reset = make(length=20)
    y_all, final_all = causal_conv1d(x, weight, bias, reset, init)
    y1, w1 = causal_conv1d(x[..., :3], weight, bias, reset[:, :3], init)  # shorter than the kernel
    y2, w2 = causal_conv1d(x[..., 3:], weight, bias, reset[:, 3:], w1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_all)
    torch.testing.assert_close(w2, final_all)


def test_no_leak_between_stacked_trajectories():
    x, weight, bias, _, _ = make(batch=1, length=24)
    reset = torch.zeros(1, 24, dtype=torch.bool)
    reset[0, [0, 10]] = True
    y_row, _ = causal_conv1d(x, weight, bias, reset)
    torch.testing.assert_close(y_row[..., 10:], causal_conv1d(x[..., 10:], weight, bias)[0])


@pytest.mark.skipif(cpu_kernel.load() is None, reason="no C compiler for the CPU kernels")
@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("with_state", [False, True])
def test_cpu_kernel_matches_loop_float32_with_gradients(k, with_state):
    """The compiled float32 path vs the float64 loop within 1e-5: y, the carried window and every gradient."""
    x, weight, bias, init, reset = make(k=k)
    init = init if with_state else torch.zeros_like(init)
    leaves64 = [t.clone().requires_grad_() for t in (x, weight, bias, init)]
    leaves32 = [t.float().requires_grad_() for t in (x, weight, bias, init)]
    y_ref = loop_reference(*leaves64[:3], reset, leaves64[3])
    y, final = causal_conv1d(*leaves32[:3], reset, leaves32[3] if with_state else None)
    final_ref = final_window_reference(leaves64[0], leaves64[3], reset, k)
    g = torch.Generator().manual_seed(4)
    w_y, w_f = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (y_ref, final_ref))
    loss_ref = (y_ref * w_y).sum() + (final_ref * w_f).sum()
    loss = (y * w_y.float()).sum() + (final * w_f.float()).sum()
    grads_ref = [torch.zeros_like(t) if gr is None else gr  # k = 1 reads no earlier input
                 for t, gr in zip(leaves64, torch.autograd.grad(loss_ref, leaves64, allow_unused=True))]
    grads = torch.autograd.grad(loss, leaves32 if with_state else leaves32[:3])
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, final_ref.float(), rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("x", "weight", "bias", "initial_state"), grads, grads_ref):
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5, msg=name)


def final_window_reference(x, init, reset, k):
    """The last k-1 inputs of each row's current trajectory (zero before its latest reset), by a plain loop."""
    rows = []
    for b in range(x.shape[0]):
        history = list(init[b].unbind(-1))
        for t in range(x.shape[-1]):
            if reset[b, t]:
                history = [torch.zeros(x.shape[1], dtype=x.dtype)] * (k - 1)
            history = (history + [x[b, :, t]])[1:] if k > 1 else []
        rows.append(torch.stack(history, -1) if history else x.new_zeros(x.shape[1], 0))
    return torch.stack(rows)
