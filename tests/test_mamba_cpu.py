"""The Mamba mixer's CPU node (``ops.mamba_cpu``) equals the mixer's generic path, composed op by op under
autograd with the plain-loop scan: outputs, final states and every gradient, float32, with resets
(at 0, consecutive, at the last step), initial states or none, several lengths and d_conv 1. The whole
encoder's node equals the float64 generic encoder the same way (blocks, input layers, folded projections)."""

import copy

import pytest
import torch

from resel_train.nets.encoders import MambaEncoder
from resel_train.nets.inputs import HistoryEmbedding
from resel_train.nets.mamba import Mamba
from resel_train.ops import cpu_kernel

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason="the CPU kernels did not build here")


def _case(length: int, with_state: bool, d_conv: int, seed: int = 0):
    torch.manual_seed(seed)
    fused = Mamba(16, d_state=8, d_conv=d_conv, expand=2, dt_rank=4)
    with torch.no_grad():  # away from the init's symmetric values (D = 1, zero conv bias)
        for p in fused.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    loop = copy.deepcopy(fused)
    loop.scan_impl = "loop"  # the generic path: conv, SiLU, projections and the plain-loop scan under autograd
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, length, 16, generator=g)
    reset = torch.zeros(3, length, dtype=torch.bool)
    reset[0, 0] = reset[1, 0] = True  # row 2 carries its state in, resetting only at the last step
    reset[1, 2:4] = True  # consecutive resets (where the row is long enough)
    reset[2, length - 1] = True
    state = None
    if with_state:
        state = (torch.randn(3, 32, d_conv - 1, generator=g), torch.randn(3, 32, 8, generator=g))
    return fused, loop, x, reset, state, g


@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("d_conv", [4, 1])
def test_cpu_node_equals_the_generic_mixer(length, with_state, d_conv):
    fused, loop, x, reset, state, g = _case(length, with_state, d_conv)
    grad_y = torch.randn(3, length, 16, generator=g)
    grad_final = [torch.randn(3, 32, d_conv - 1, generator=g), torch.randn(3, 32, 8, generator=g)]
    results = []
    for mixer in (fused, loop):
        xl = x.clone().requires_grad_()
        sl = None if state is None else tuple(s.clone().requires_grad_() for s in state)
        y, final = mixer(xl, reset, sl)
        loss = (y * grad_y).sum() + sum((f * w).sum() for f, w in zip(final, grad_final))
        loss.backward()
        grads = [xl.grad] + ([] if sl is None else [s.grad for s in sl]) + [p.grad for p in mixer.parameters()]
        results.append([y, *final, *grads])
    names = ["y", "final conv", "final ssm", "grad x"] + (["grad conv state", "grad ssm state"] if with_state else []) \
        + [f"grad {n}" for n, _ in fused.named_parameters()]
    assert len(names) == len(results[0])
    for name, got, want in zip(names, *results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_cpu_node_without_grad_equals_the_generic_mixer():
    fused, loop, x, reset, state, _ = _case(19, True, 4)
    with torch.no_grad():
        got, want = fused(x, reset, state), loop(x, reset, state)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _encoder_case(n_blocks: int, input_layers: int, folded: bool, with_state: bool, d_conv: int):
    """A float32 Mamba encoder (the CPU node) and its float64 copy (the generic path: modules op by op)."""
    torch.manual_seed(n_blocks * 10 + input_layers)
    embedding = HistoryEmbedding(3, 2, True, 8)
    encoder = MambaEncoder(embedding.out_dim, 12, 16, n_blocks=n_blocks, d_state=4, d_conv=d_conv, dt_rank=2,
                           input_layers=input_layers)
    with torch.no_grad():  # away from the init's zero biases, unit norms and D = 1
        for p in [*encoder.parameters(), *embedding.parameters()]:
            p.add_(torch.randn(p.shape) * 0.05)
    g = torch.Generator().manual_seed(5)
    length = 13
    inputs = [torch.randn(3, length, n, generator=g) for n in (3, 3, 2, 1)]
    reset = torch.zeros(3, length, dtype=torch.bool)
    reset[0, 0] = reset[1, 0] = True
    reset[1, 3:5] = True
    reset[2, length - 1] = True
    state = None
    if with_state:
        state = tuple(torch.randn(3, 32, n, generator=g) for _ in range(n_blocks) for n in (d_conv - 1, 4))
    return encoder, embedding, inputs, reset, state, g


@pytest.mark.parametrize(("n_blocks", "input_layers", "folded", "with_state", "d_conv"),
                         [(1, 1, True, False, 4), (1, 1, False, True, 4), (2, 3, True, True, 4), (2, 1, True, False, 1)])
def test_encoder_node_equals_the_generic_encoder_in_float64(n_blocks, input_layers, folded, with_state, d_conv):
    """The whole encoder as one node: output, final states and every gradient (parameters, projections, initial
    states) against the float64 generic path (the modules op by op, the chunked scan)."""
    encoder, embedding, inputs, reset, state, g = _encoder_case(n_blocks, input_layers, folded, with_state, d_conv)
    grad_y = torch.randn(3, 13, 12, generator=g)
    grad_final = [torch.randn(s.shape, generator=g) for s in state] if state else None
    results = []
    for dtype in (torch.float32, torch.float64):
        enc, emb = copy.deepcopy(encoder).to(dtype), copy.deepcopy(embedding).to(dtype)
        xs = [x.to(dtype) for x in inputs]
        sl = None if state is None else tuple(s.to(dtype, copy=True).requires_grad_() for s in state)
        if folded:
            y, final = enc(emb.raw(*xs), reset, sl, emb.projections)
        else:
            y, final = enc(emb(*xs), reset, sl)
        loss = (y * grad_y.to(dtype)).sum()
        if grad_final:
            loss = loss + sum((f * w.to(dtype)).sum() for f, w in zip(final, grad_final))
        loss.backward()
        params = [*enc.parameters(), *emb.parameters()]
        results.append([y, *final, *([] if sl is None else [s.grad for s in sl]), *(p.grad for p in params)])
    names = ["y"] + [f"final {i}" for i in range(2 * n_blocks)] + \
        ([f"grad state {i}" for i in range(2 * n_blocks)] if with_state else []) + \
        [f"grad {n}" for n, _ in [*encoder.named_parameters(), *embedding.named_parameters()]]
    assert len(names) == len(results[0])
    for name, got, want in zip(names, *results):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_encoder_node_runs_and_without_grad_matches():
    """The node is what a float32 CPU forward runs (one autograd node), and its no-grad forward gives the same values."""
    encoder, embedding, inputs, reset, state, _ = _encoder_case(1, 1, True, True, 4)
    raw = embedding.raw(*inputs)
    y, final = encoder(raw, reset, state, embedding.projections)
    assert type(y.grad_fn).__name__ == "_KernelMambaEncoderBackward"
    with torch.no_grad():
        y_ng, final_ng = encoder(raw, reset, state, embedding.projections)
        y64, final64 = copy.deepcopy(encoder).double()(raw.double(), reset, tuple(s.double() for s in state),
                                                        copy.deepcopy(embedding).double().projections)
    for a, b, c in zip([y, *final], [y_ng, *final_ng], [y64, *final64]):
        torch.testing.assert_close(a.detach(), b)
        torch.testing.assert_close(b.double(), c, rtol=1e-5, atol=1e-5)
