"""Context encoders: step == forward with resets, no leakage, carried state, Mamba parameter layout."""

import math

import pytest
import torch

from resel_train.nets.encoders import make_encoder
from resel_train.nets.mamba import Mamba
from tests.encoder_checks import assert_step_matches_forward

SMALL_MAMBA = dict(d_state=8, d_conv=4, expand=2, dt_rank=4)


def encoder(kind, in_dim=6, seed=0, **kw):
    torch.manual_seed(seed)
    extra = {**SMALL_MAMBA, **kw} if kind == "mamba" else ({"d_state": 4, **kw} if kind == "s5" else {})
    return make_encoder(kind, in_dim, out_dim=8, hidden=16, **extra)


def sequence(batch=3, length=41, in_dim=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, in_dim, generator=g)
    resets = torch.rand(batch, length, generator=g) < 0.1
    resets[:, 0] = True
    resets[1, 7:9] = True
    resets[2, -1] = True
    return x, resets


@pytest.mark.parametrize("kind", ["mamba", "gru", "lstm", "s5", "mlp"])
def test_step_equals_forward_float32(kind):
    enc = encoder(kind)
    x, resets = sequence()
    assert_step_matches_forward(enc, x, resets)


def test_two_mamba_blocks_step_equals_forward():
    enc = encoder("mamba", n_blocks=2)
    x, resets = sequence(length=20)
    y_seq, _ = enc(x, resets)
    state, ys = enc.initial_state(3), []
    for t in range(20):
        y_t, state = enc.step(x[:, t], resets[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y_seq, rtol=1e-5, atol=1e-5)
    assert enc.state_names() == ["block0.conv", "block0.ssm", "block1.conv", "block1.ssm"]


@pytest.mark.parametrize("kind", ["mamba", "gru", "lstm", "s5"])
def test_stacked_with_padding_equals_alone(kind):
    enc = encoder(kind).double()
    g = torch.Generator().manual_seed(3)
    first, second = torch.randn(1, 13, 6, generator=g, dtype=torch.float64), torch.randn(1, 9, 6, generator=g,
                                                                                         dtype=torch.float64)
    pad = torch.zeros(1, 3, 6, dtype=torch.float64)  # shorter than d_conv - 1: the reset alone must separate
    row = torch.cat([first, pad, second], 1)
    resets = torch.zeros(1, row.shape[1], dtype=torch.bool)
    resets[0, 0] = resets[0, 16] = True
    y_row, _ = enc(row, resets)
    for seg, lo in ((first, 0), (second, 16)):
        alone, _ = enc(seg, torch.nn.functional.pad(torch.ones(1, 1, dtype=torch.bool), (0, seg.shape[1] - 1)))
        torch.testing.assert_close(y_row[:, lo:lo + seg.shape[1]], alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["mamba", "gru", "lstm", "s5"])
def test_state_carried_across_calls(kind):
    enc = encoder(kind)
    x, resets = sequence(length=30)
    y_all, final_all = enc(x, resets)
    y1, s1 = enc(x[:, :11], resets[:, :11])
    y2, s2 = enc(x[:, 11:], resets[:, 11:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=1e-5, atol=1e-5)
    for a, b in zip(s2, final_all, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mamba_init_and_mamba_ssm_parameter_layout():
    m = Mamba(d_model=256, d_state=64, d_conv=8, expand=2, dt_rank=16)
    # names and shapes of mamba_ssm.modules.mamba_simple.Mamba(256, 64, 8, 2, dt_rank=16)
    expected = {
        "A_log": (512, 64), "D": (512,), "in_proj.weight": (1024, 256), "conv1d.weight": (512, 1, 8),
        "conv1d.bias": (512,), "x_proj.weight": (16 + 128, 512), "dt_proj.weight": (512, 16), "dt_proj.bias": (512,),
        "out_proj.weight": (256, 512),
    }
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    torch.testing.assert_close(m.A_log[3], torch.log(torch.arange(1, 65, dtype=torch.float32)))
    assert torch.all(m.D == 1)
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert abs(dt.log().mean().item() - 0.5 * (math.log(1e-3) + math.log(0.1))) < 0.3  # log-uniform


def test_unknown_encoder_is_named():
    with pytest.raises(ValueError, match="unknown encoder 'transformer'"):
        make_encoder("transformer", 4)
    with pytest.raises(ValueError, match="takes no encoder_kwargs"):
        make_encoder("lstm", 4, d_state=8)
