"""GRU encoder (nn.GRU on the segment layout; a compiled loop for float32 on a CPU) against a plain step
loop (values and gradients), edge shapes, step == forward, no leakage between stacked trajectories,
carried state, old checkpoints."""

import copy

import pytest
import torch
import torch.nn.functional as F

from resel_train.nets.encoders import GRUEncoder
from resel_train.nets.segments import segment_layout
from resel_train.ops import cpu_kernel
from tests.encoder_checks import assert_matches_reference, assert_step_matches_forward, mixed_resets

IN, OUT, HID = 5, 7, 12


def make(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return GRUEncoder(IN, OUT, HID).to(dtype)


def reference(enc, x, resets, state):
    """The pre-nn.GRU encoder: GRU maths (gate order r, z, n) looped over time, memory zeroed at resets."""
    g = enc.gru
    h_in = F.elu(enc.input(x))
    keep = 1.0 - resets.to(x.dtype)
    (h,), outs = state, []
    for t in range(x.shape[1]):
        h = h * keep[:, t, None]
        i_r, i_z, i_n = (h_in[:, t] @ g.weight_ih_l0.T + g.bias_ih_l0).chunk(3, -1)
        h_r, h_z, h_n = (h @ g.weight_hh_l0.T + g.bias_hh_l0).chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
        outs.append(h)
    return enc.output(F.elu(torch.stack(outs, 1))), (h,)


def mixed_batch(length=23, dtype=torch.float64, seed=1):
    """Five rows of the reset cases of ``mixed_resets``, random inputs and carried state."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, length, IN, generator=g, dtype=dtype)
    resets = mixed_resets(length, g)
    state = torch.randn(5, HID, generator=g, dtype=dtype)
    return x, resets, state


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_forward_and_gradients_match_reference_loop(dtype, tol):
    enc = make(dtype)
    x, resets, state = mixed_batch(dtype=dtype)
    assert_matches_reference(enc, reference, x, resets, (state,), tol)


@pytest.mark.parametrize("batch,length", [(1, 1), (4, 1), (1, 17), (3, 2)])
def test_edge_shapes_match_reference_loop(batch, length):
    enc = make()
    g = torch.Generator().manual_seed(batch * 100 + length)
    x = torch.randn(batch, length, IN, generator=g, dtype=torch.float64)
    state = torch.randn(batch, HID, generator=g, dtype=torch.float64)
    for resets in (torch.zeros(batch, length, dtype=torch.bool), torch.ones(batch, length, dtype=torch.bool),
                   torch.rand(batch, length, generator=g) < 0.5):
        y, (h,) = enc(x, resets, (state,))
        y_ref, (h_ref,) = reference(enc, x, resets, (state,))
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


def test_step_rolled_equals_forward_from_carried_state():
    enc = make(torch.float32)
    x, resets, state = mixed_batch(dtype=torch.float32)
    assert_step_matches_forward(enc, x, resets, (state,))


def test_no_leakage_between_trajectories_in_a_row():
    enc = make()
    x, resets, state = mixed_batch()
    row, cut = 1, int(resets[1, 1:].nonzero()[0]) + 1  # the second trajectory of row 1 starts at `cut`
    y, _ = enc(x, resets, (state,))
    x2, state2 = x.clone(), state.clone()
    x2[row, :cut] += 10 * torch.randn(cut, IN, dtype=torch.float64)  # change only trajectory 1 of row 1
    state2[row] += 5.0  # and the carried state (row 1 starts with a reset: it must not matter anywhere)
    y2, _ = enc(x2, resets, (state2,))
    assert not torch.allclose(y2[row, :cut], y[row, :cut])
    torch.testing.assert_close(y2[row, cut:], y[row, cut:], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([y2[:row], y2[row + 1:]]), torch.cat([y[:row], y[row + 1:]]),
                               rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 6, 13, 22])
def test_state_carried_across_two_calls_equals_one_call(split):
    enc = make()
    x, resets, state = mixed_batch()
    y_all, (h_all,) = enc(x, resets, (state,))
    y1, s1 = enc(x[:, :split], resets[:, :split], (state,))
    y2, (h2,) = enc(x[:, split:], resets[:, split:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, h_all, rtol=1e-12, atol=1e-12)


def test_rows_without_resets_continue_the_state():
    enc = make()
    x, _, state = mixed_batch()
    resets = torch.zeros(x.shape[:2], dtype=torch.bool)
    y, (h,) = enc(x, resets, (state,))
    expected = enc.gru(F.elu(enc.input(x)), state[None])[0]  # plain nn.GRU, no layout at all
    torch.testing.assert_close(y, enc.output(F.elu(expected)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, expected[:, -1], rtol=1e-12, atol=1e-12)
    y0, _ = enc(x, resets)  # and the state matters: zeros give other outputs
    assert not torch.allclose(y0[:, 0], y[:, 0])


def test_segment_layout_by_hand():
    resets = torch.tensor([[False, False, True, False, False],
                           [True, True, False, False, True]])
    lay = segment_layout(resets)
    # segments: row 0 -> [0, 1], [2, 3, 4]; row 1 -> [0], [1, 2, 3], [4]
    assert (lay.num_segments, lay.max_len) == (5, 3)
    assert lay.index.tolist() == [0, 1, 3, 4, 5, 6, 9, 10, 11, 12]
    assert lay.row_first.tolist() == [0, 2]
    x = torch.arange(10.0).view(2, 5, 1)
    packed = lay.pack(x)
    assert packed[..., 0].tolist() == [[0, 1, 0], [2, 3, 4], [5, 0, 0], [6, 7, 8], [9, 0, 0]]
    assert torch.equal(lay.unpack(packed), x)
    h0 = lay.initial(torch.tensor([[1.0], [2.0]]), ~resets[:, 0])
    assert h0[:, 0].tolist() == [1, 0, 0, 0, 0]


def test_loads_checkpoints_saved_with_the_grucell_names():
    enc = make(torch.float32)
    old = {k.replace("gru.", "cell.").replace("_l0", ""): v.clone() for k, v in enc.state_dict().items()}
    assert "cell.weight_hh" in old and not any(k.startswith("gru.") for k in old)
    fresh = make(torch.float32, seed=5)
    fresh.load_state_dict(old)
    for (name, a), b in zip(enc.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.skipif(cpu_kernel.load() is None, reason="no C compiler for the CPU kernels")
@pytest.mark.parametrize("length", [1, 2, 23])
def test_cpu_kernel_float32_matches_float64_loop_with_gradients(monkeypatch, length):
    """The compiled float32 CPU loop vs the float64 step loop within 1e-5: outputs, final state and the
    gradients w.r.t. inputs, initial state and every parameter (all five reset cases)."""
    calls = []
    real = cpu_kernel.gru_forward
    monkeypatch.setattr(cpu_kernel, "gru_forward", lambda *a: calls.append(1) or real(*a))
    enc64 = make()
    enc32 = copy.deepcopy(enc64).float()
    x, resets, state = mixed_batch(length=23)
    x, resets = x[:, :length], resets[:, :length]  # short cuts keep the no-reset, all-reset and reset-at-0 rows
    g = torch.Generator().manual_seed(3)
    grad_y = torch.randn(*x.shape[:2], OUT, generator=g, dtype=torch.float64)
    grad_h = torch.randn(state.shape, generator=g, dtype=torch.float64)
    results = []
    for enc, run in ((enc32, enc32), (enc64, lambda *a: reference(enc64, *a))):
        dtype = next(enc.parameters()).dtype
        xl, hl = x.to(dtype).requires_grad_(), state.to(dtype).requires_grad_()
        y, (h,) = run(xl, resets, (hl,))
        ((y * grad_y.to(dtype)).sum() + (h * grad_h.to(dtype)).sum()).backward()
        results.append([y, h, xl.grad, hl.grad] + [p.grad for p in enc.parameters()])
    assert calls, "the float32 CPU forward did not take the compiled path"
    names = ["y", "final state", "grad x", "grad state"] + [n for n, _ in enc32.named_parameters()]
    for name, got, want in zip(names, *results, strict=True):
        torch.testing.assert_close(got.detach(), want.detach().float(), rtol=1e-5, atol=1e-5, msg=name)
