"""LSTM encoder on nn.LSTM: the packed segment layout against a plain step loop (values, final (h, c) and
gradients), edge shapes, step == forward, no leakage between stacked trajectories, carried state."""

import pytest
import torch
import torch.nn.functional as F

from resel_train.nets.encoders import LSTMEncoder
from tests.encoder_checks import assert_matches_reference, assert_step_matches_forward, mixed_resets

IN, OUT, HID = 5, 7, 12


def make(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return LSTMEncoder(IN, OUT, HID).to(dtype)


def reference(enc, x, resets, state):
    """LSTM maths (gate order i, f, g, o) looped over time, memory zeroed at resets."""
    m, (h, c) = enc.lstm, state
    h_in = F.elu(enc.input(x))
    keep = 1.0 - resets.to(x.dtype)
    outs = []
    for t in range(x.shape[1]):
        h, c = h * keep[:, t, None], c * keep[:, t, None]
        gates = h_in[:, t] @ m.weight_ih_l0.T + m.bias_ih_l0 + h @ m.weight_hh_l0.T + m.bias_hh_l0
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return enc.output(F.elu(torch.stack(outs, 1))), (h, c)


def mixed_batch(length=23, dtype=torch.float64, seed=1):
    """Five rows of the reset cases of ``mixed_resets``, random inputs and carried (h, c)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, length, IN, generator=g, dtype=dtype)
    resets = mixed_resets(length, g)
    h = torch.randn(5, HID, generator=g, dtype=dtype)
    c = torch.randn(5, HID, generator=g, dtype=dtype)
    return x, resets, h, c


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_forward_and_gradients_match_reference_loop(dtype, tol):
    enc = make(dtype)
    x, resets, h0, c0 = mixed_batch(dtype=dtype)
    assert_matches_reference(enc, reference, x, resets, (h0, c0), tol)


@pytest.mark.parametrize("batch,length", [(1, 1), (4, 1), (1, 17), (3, 2)])
def test_edge_shapes_match_reference_loop(batch, length):
    enc = make()
    g = torch.Generator().manual_seed(batch * 100 + length)
    x = torch.randn(batch, length, IN, generator=g, dtype=torch.float64)
    h0, c0 = (torch.randn(batch, HID, generator=g, dtype=torch.float64) for _ in range(2))
    for resets in (torch.zeros(batch, length, dtype=torch.bool), torch.ones(batch, length, dtype=torch.bool),
                   torch.rand(batch, length, generator=g) < 0.5):
        y, (h, c) = enc(x, resets, (h0, c0))
        y_ref, (h_ref, c_ref) = reference(enc, x, resets, (h0, c0))
        for got, want in ((y, y_ref), (h, h_ref), (c, c_ref)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_step_rolled_equals_forward_from_carried_state():
    enc = make(torch.float32)
    x, resets, h0, c0 = mixed_batch(dtype=torch.float32)
    assert_step_matches_forward(enc, x, resets, (h0, c0))
    assert enc.state_names() == ["lstm.h", "lstm.c"]


def test_no_leakage_between_trajectories_in_a_row():
    enc = make()
    x, resets, h0, c0 = mixed_batch()
    row, cut = 1, int(resets[1, 1:].nonzero()[0]) + 1
    y, _ = enc(x, resets, (h0, c0))
    x2, h2, c2 = x.clone(), h0.clone(), c0.clone()
    x2[row, :cut] += 10 * torch.randn(cut, IN, dtype=torch.float64)
    h2[row] += 5.0
    c2[row] -= 5.0  # row 1 starts with a reset: its carried state must not matter
    y2, _ = enc(x2, resets, (h2, c2))
    assert not torch.allclose(y2[row, :cut], y[row, :cut])
    torch.testing.assert_close(y2[row, cut:], y[row, cut:], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([y2[:row], y2[row + 1:]]), torch.cat([y[:row], y[row + 1:]]),
                               rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 6, 13, 22])
def test_state_carried_across_two_calls_equals_one_call(split):
    enc = make()
    x, resets, h0, c0 = mixed_batch()
    y_all, final_all = enc(x, resets, (h0, c0))
    y1, s1 = enc(x[:, :split], resets[:, :split], (h0, c0))
    y2, s2 = enc(x[:, split:], resets[:, split:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=1e-12, atol=1e-12)
    for a, b in zip(s2, final_all, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rows_without_resets_are_plain_nn_lstm():
    enc = make()
    x, _, h0, c0 = mixed_batch()
    resets = torch.zeros(x.shape[:2], dtype=torch.bool)
    y, (h, c) = enc(x, resets, (h0, c0))
    expected, (h_n, c_n) = enc.lstm(F.elu(enc.input(x)), (h0[None], c0[None]))
    torch.testing.assert_close(y, enc.output(F.elu(expected)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_n[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_n[0], rtol=1e-12, atol=1e-12)
