"""Resettable S5: the log-depth scan against its loop (values and gradients, float64), the layer against
a plain complex-number reference, HiPPO-N and ZOH against their definitions, step == forward, no
leakage between stacked trajectories, carried state."""

import math

import pytest
import torch

from resel_train.nets.encoders import S5Encoder
from resel_train.nets.s5 import S5SSM, hippo_n
from resel_train.ops.s5_scan import s5_scan, s5_scan_loop
from tests.encoder_checks import assert_step_matches_forward

C128 = torch.complex128


def scan_inputs(batch, length, p, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    # |a| in (0.5, 1): long memory, so a wrong window test would show
    log_a = torch.complex(-torch.rand(p, generator=g, dtype=torch.float64) * 0.7, r(p) * 2)
    return log_a, torch.complex(r(batch, length, p), r(batch, length, p)), torch.complex(r(batch, p), r(batch, p))


def reset_patterns(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    resets = torch.rand(batch, length, generator=g) < 0.2
    resets[0] = False  # pure continuation of h0
    if batch > 1:
        resets[1] = False
        resets[1, 0] = True  # reset at t=0
        if length > 4:
            resets[1, 2:4] = True  # consecutive resets
        resets[1, -1] = True  # and at the last step
    if batch > 2:
        resets[2] = True  # every step
    return resets


@pytest.mark.parametrize("batch,length", [(1, 1), (4, 2), (5, 37), (4, 64), (3, 129)])
@pytest.mark.parametrize("with_h0", [True, False])
def test_parallel_scan_equals_loop_values_and_gradients(batch, length, with_h0):
    log_a, b, h0 = scan_inputs(batch, length, 6, seed=length)
    resets = reset_patterns(batch, length, seed=length + 1)
    g = torch.Generator().manual_seed(7)
    grad = torch.complex(torch.randn(batch, length, 6, generator=g, dtype=torch.float64),
                         torch.randn(batch, length, 6, generator=g, dtype=torch.float64))
    results = []
    for scan in (s5_scan, s5_scan_loop):
        leaves = [t.clone().requires_grad_() for t in (log_a, b, h0)]
        h = scan(leaves[0], leaves[1], resets, leaves[2] if with_h0 else None)
        (h * grad.conj()).real.sum().backward()
        results.append([h] + [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves[: 3 if with_h0 else 2]])
    for name, got, want in zip(["h", "grad log_a", "grad b", "grad h0"], *results, strict=False):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}")


def test_scan_reset_discards_the_past():
    log_a, b, h0 = scan_inputs(2, 20, 3, seed=0)
    resets = torch.zeros(2, 20, dtype=torch.bool)
    resets[:, 9] = True
    h = s5_scan(log_a, b, resets, h0)
    h2 = s5_scan(log_a, torch.cat([b[:, :9] * 50, b[:, 9:]], 1), resets, h0 * 3)
    torch.testing.assert_close(h[:, 9:], h2[:, 9:], rtol=0, atol=0)
    assert not torch.allclose(h[:, :9], h2[:, :9])


def test_hippo_n_is_the_diagonalised_normal_hippo():
    n = 12
    lam, v = hippo_n(n)
    k = torch.arange(n, dtype=torch.float64)
    # HiPPO-LegS by definition: -sqrt(2i+1) sqrt(2j+1) below the diagonal, -(i+1) on it, 0 above
    legs = torch.tensor([[-math.sqrt((2 * i + 1) * (2 * j + 1)) if i > j else (-(i + 1.0) if i == j else 0.0)
                          for j in range(n)] for i in range(n)], dtype=torch.float64)
    normal = legs + 0.5 * torch.sqrt((2 * k + 1)[:, None] * (2 * k + 1)[None, :])  # + p p^T, p = sqrt(k + 1/2)
    torch.testing.assert_close(v @ torch.diag(lam) @ v.conj().T, normal.to(C128), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v.conj().T @ v, torch.eye(n, dtype=C128), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lam.real, torch.full((n,), -0.5, dtype=torch.float64))
    assert torch.all(lam.imag[1:] >= lam.imag[:-1])  # sorted: the kept half is one of each conjugate pair
    torch.testing.assert_close(lam.imag[: n // 2], -lam.imag[n // 2:].flip(0), rtol=1e-10, atol=1e-10)


def test_init_and_zoh_match_their_definitions():
    torch.manual_seed(0)
    ssm = S5SSM(d_model=5, d_state=4).double()
    lam_full, _ = hippo_n(8)
    torch.testing.assert_close(torch.complex(ssm.Lambda_re, ssm.Lambda_im), lam_full[:4])
    dt = torch.exp(ssm.log_step)
    assert dt.min() >= 1e-3 and dt.max() <= 0.1
    log_re, log_im, bbar_re, bbar_im = ssm.discretise()
    lam = torch.complex(ssm.Lambda_re, ssm.Lambda_im)
    b = torch.complex(ssm.B_re, ssm.B_im)
    for i in range(4):  # ZOH by definition: expm([[lam, b], [0, 0]] dt) = [[Abar, Bbar], [0, 1]] (torch expm: ~1e-10)
        block = torch.zeros(6, 6, dtype=C128)
        block[0, 0], block[0, 1:] = lam[i], b[i]
        expm = torch.linalg.matrix_exp(block * dt[i])
        torch.testing.assert_close(torch.exp(torch.complex(log_re[i], log_im[i])), expm[0, 0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(torch.complex(bbar_re[i], bbar_im[i]), expm[0, 1:], rtol=1e-9, atol=1e-9)


def reference_ssm(ssm, u, resets, h0):
    """The S5 SSM in plain complex numbers, straight from its definition, one step at a time."""
    lam = torch.complex(ssm.Lambda_re.clamp(max=-1e-4), ssm.Lambda_im)
    dt = torch.exp(ssm.log_step)
    abar = torch.exp(lam * dt)
    bbar = ((abar - 1) / lam)[:, None] * torch.complex(ssm.B_re, ssm.B_im)
    c = torch.complex(ssm.C_re, ssm.C_im)
    h, ys = h0, []
    for t in range(u.shape[1]):
        h = abar * h * (~resets[:, t, None]) + u[:, t].to(C128) @ bbar.T
        ys.append(2 * (h @ c.T).real + ssm.D * u[:, t])
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("impl", ["parallel", "loop"])
def test_ssm_forward_and_gradients_match_complex_reference(impl):
    torch.manual_seed(1)
    ssm = S5SSM(d_model=5, d_state=4, scan_impl=impl).double()
    with torch.no_grad():
        ssm.Lambda_re[0] = 0.3  # clipped to -1e-4 (stability)
        ssm.log_step.add_(2.0)  # larger steps, so the dynamics matter within 30 steps
    g = torch.Generator().manual_seed(2)
    u = torch.randn(3, 30, 5, generator=g, dtype=torch.float64)
    resets = reset_patterns(3, 30, seed=3)
    h0 = torch.randn(3, 4, generator=g, dtype=C128)
    grad_y = torch.randn(3, 30, 5, generator=g, dtype=torch.float64)
    results = []
    for use_ref in (False, True):
        ssm.zero_grad(set_to_none=True)
        ul = u.clone().requires_grad_()
        if use_ref:
            y, h = reference_ssm(ssm, ul, resets, h0)
        else:
            y, (h_re, h_im) = ssm(ul, resets, (h0.real.clone(), h0.imag.clone()))
            h = torch.complex(h_re, h_im)
        ((y * grad_y).sum() + h.real.sum() + h.imag.sum()).backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in ssm.parameters()]
        results.append([y, h, ul.grad] + grads)
    names = ["y", "final", "grad u"] + [n for n, _ in ssm.named_parameters()]
    for name, got, want in zip(names, *results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
    assert results[0][names.index("Lambda_re")][0] == 0  # clipped: no gradient into that mode


def encoder(seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return S5Encoder(6, 8, 16, **{"n_layers": 2, "d_state": 4, **kw}).to(dtype)


def sequence(batch=3, length=41, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, 6, generator=g, dtype=dtype)
    return x, reset_patterns(batch, length, seed)


def test_encoder_parallel_equals_loop_in_float64_with_gradients():
    results = []
    for impl in ("parallel", "loop"):
        enc = encoder(dtype=torch.float64, scan_impl=impl)
        x, resets = sequence(dtype=torch.float64)
        state = tuple(torch.randn(s.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
                      for s in enc.initial_state(3, dtype=torch.float64))
        y, final = enc(x, resets, state)
        (y.square().sum() + sum(s.sum() for s in final)).backward()
        results.append([y, *final] + [p.grad for p in enc.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_step_rolled_equals_forward_from_carried_state():
    enc = encoder()
    x, resets = sequence()
    g = torch.Generator().manual_seed(5)
    state = tuple(torch.randn(s.shape, generator=g) for s in enc.initial_state(3))
    assert_step_matches_forward(enc, x, resets, state)
    final = enc(x, resets, state)[1]
    assert enc.state_names() == ["layer0.re", "layer0.im", "layer1.re", "layer1.im"]
    assert [tuple(t.shape) for t in final] == [(3, 4)] * 4


def test_no_leakage_between_trajectories_in_a_row():
    enc = encoder(dtype=torch.float64)
    x, resets = sequence(dtype=torch.float64)
    resets[:] = False
    resets[:, 0] = True
    resets[1, 17] = True
    state = tuple(torch.randn(s.shape, dtype=torch.float64) for s in enc.initial_state(3, dtype=torch.float64))
    y, _ = enc(x, resets, state)
    x2, state2 = x.clone(), tuple(s.clone() for s in state)
    x2[1, :17] += 10 * torch.randn(17, 6, dtype=torch.float64)
    state2[0][1] += 5.0  # row 1 starts with a reset: the carried state must not matter either
    y2, _ = enc(x2, resets, state2)
    assert not torch.allclose(y2[1, :17], y[1, :17])
    torch.testing.assert_close(y2[1, 17:], y[1, 17:], rtol=0, atol=0)
    torch.testing.assert_close(y2[[0, 2]], y[[0, 2]], rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 20, 40])
def test_state_carried_across_two_calls_equals_one_call(split):
    enc = encoder(dtype=torch.float64)
    x, resets = sequence(dtype=torch.float64)
    y_all, final_all = enc(x, resets)
    y1, s1 = enc(x[:, :split], resets[:, :split])
    y2, s2 = enc(x[:, split:], resets[:, split:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=1e-12, atol=1e-12)
    for a, b in zip(s2, final_all, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bad_scan_impl_is_named():
    with pytest.raises(ValueError, match="scan_impl"):
        S5SSM(4, 2, scan_impl="cuda")
