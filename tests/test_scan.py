"""The reset-aware selective scan: the parallel (chunked) path and the CPU kernel vs the plain loop and closed forms."""

import shutil
import warnings

import pytest
import torch

import resel_train.ops.scan as scan_mod
from resel_train import selective_scan
from resel_train.ops import cpu_kernel


def make_inputs(batch=3, d_inner=5, d_state=6, length=37, dtype=torch.float64, seed=0, resets="mixed"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    inputs = dict(
        u=r(batch, d_inner, length), delta=r(batch, d_inner, length) * 0.5,
        A=-torch.rand(d_inner, d_state, generator=g, dtype=dtype) * 3 - 0.1,
        B=r(batch, d_state, length), C=r(batch, d_state, length), D=r(d_inner), z=r(batch, d_inner, length),
        delta_bias=r(d_inner) * 0.1, initial_state=r(batch, d_inner, d_state),
    )
    reset = torch.zeros(batch, length, dtype=torch.bool)
    if resets == "mixed":
        reset[0, 0] = True  # reset at t=0 (initial state discarded) ...
        reset[0, 9:11] = True  # ... consecutive resets ...
        reset[1, length - 1] = True  # ... a reset at the last step
        reset[2] = torch.rand(length, generator=g) < 0.15
    return inputs, reset


def run(impl, inputs, reset, grad_seed=1):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y, last = selective_scan(
        leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
        leaves["delta_bias"], True, reset, leaves["initial_state"], return_last_state=True, impl=impl,
    )
    g = torch.Generator().manual_seed(grad_seed)
    weights = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)  # noqa: E731  same in any dtype
    loss = (y * weights(y)).sum() + (last * weights(last)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y.detach(), last.detach(), dict(zip(leaves, grads))


@pytest.mark.parametrize("chunk_elements", [None, 3 * 5 * 6 * 8])  # default (one chunk) and 8-step chunks
@pytest.mark.parametrize("length", [1, 37, 64])
def test_parallel_matches_loop_float64(monkeypatch, chunk_elements, length):
    if chunk_elements:
        monkeypatch.setattr(scan_mod, "_CHUNK_ELEMENTS", chunk_elements)
    inputs, reset = make_inputs(length=length)
    y_ref, last_ref, g_ref = run("loop", inputs, reset)
    y, last, g = run("parallel", inputs, reset)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"grad {name}")


def test_parallel_matches_loop_float32(monkeypatch):
    monkeypatch.setattr(scan_mod, "_CHUNK_ELEMENTS", 3 * 5 * 6 * 16)
    inputs, reset = make_inputs(length=100, dtype=torch.float32)
    y_ref, last_ref, g_ref = run("loop", inputs, reset)
    y, last, g = run("parallel", inputs, reset)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-5, msg=f"grad {name}")


def test_parallel_gradcheck(monkeypatch):
    """Custom backward against finite differences (independent of the loop reference)."""
    inputs, reset = make_inputs(batch=3, d_inner=2, d_state=3, length=7)
    monkeypatch.setattr(scan_mod, "_CHUNK_ELEMENTS", 3 * 2 * 3 * 3)  # 3-step chunks
    args = [inputs[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C", "initial_state")]

    def f(u, delta, A, B, C, h0):
        return selective_scan(u, delta, A, B, C, reset=reset, initial_state=h0, return_last_state=True,
                              impl="parallel")

    assert torch.autograd.gradcheck(f, args)


def mamba_ssm_selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mamba-ssm's selective_scan_ref, rewritten from its documented maths (no reset, zero state)."""
    delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[None, :, None]
    return y * torch.nn.functional.silu(z), x


@pytest.mark.parametrize("impl", ["loop", "parallel"])
def test_matches_mamba_ssm_reference_without_reset(impl):
    inputs, _ = make_inputs(resets="none")
    kw = {k: inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")}
    y_ref, last_ref = mamba_ssm_selective_scan_ref(**kw, delta_softplus=True)
    y, last = selective_scan(**kw, delta_softplus=True, return_last_state=True, impl=impl)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


def test_stacked_trajectories_do_not_leak():
    """Two trajectories in one row with a reset between them == each run alone."""
    inputs, _ = make_inputs(batch=1, length=30, resets="none")
    keys = ("u", "delta", "B", "C", "z")
    reset = torch.zeros(1, 30, dtype=torch.bool)
    reset[0, 0] = reset[0, 12] = True
    common = dict(A=inputs["A"], D=inputs["D"], delta_bias=inputs["delta_bias"], delta_softplus=True)
    y_row = selective_scan(**{k: inputs[k] for k in keys}, **common, reset=reset, impl="parallel")
    for lo, hi in ((0, 12), (12, 30)):
        alone = selective_scan(**{k: inputs[k][..., lo:hi] for k in keys}, **common, impl="loop")
        torch.testing.assert_close(y_row[..., lo:hi], alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["loop", "parallel"])
def test_initial_state_carries_across_calls(impl):
    inputs, reset = make_inputs(length=40)
    keys = ("u", "delta", "B", "C", "z")
    common = dict(A=inputs["A"], D=inputs["D"], delta_bias=inputs["delta_bias"], delta_softplus=True)
    y_all, last_all = selective_scan(**{k: inputs[k] for k in keys}, **common, reset=reset,
                                     initial_state=inputs["initial_state"], return_last_state=True, impl=impl)
    y1, h1 = selective_scan(**{k: inputs[k][..., :17] for k in keys}, **common, reset=reset[:, :17],
                            initial_state=inputs["initial_state"], return_last_state=True, impl=impl)
    y2, h2 = selective_scan(**{k: inputs[k][..., 17:] for k in keys}, **common, reset=reset[:, 17:],
                            initial_state=h1, return_last_state=True, impl=impl)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_all, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, last_all, rtol=1e-12, atol=1e-12)


def test_reset_closed_form():
    """With A=0, dt=1 and no decay the state is a running sum of B*u restarted at every reset."""
    length = 12
    u = torch.ones(1, 1, length, dtype=torch.float64)
    ones = torch.ones(1, 1, length, dtype=torch.float64)
    reset = torch.zeros(1, length, dtype=torch.bool)
    reset[0, [0, 4, 5, 9]] = True
    y = selective_scan(u, ones, torch.zeros(1, 1, dtype=torch.float64), ones, ones, reset=reset, impl="parallel")
    expected = torch.tensor([1, 2, 3, 4, 1, 1, 2, 3, 4, 1, 2, 3], dtype=torch.float64)
    torch.testing.assert_close(y[0, 0], expected)


def test_bad_arguments_are_named():
    inputs, reset = make_inputs()
    with pytest.raises(ValueError, match="impl must be one of"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], impl="fast")
    with pytest.raises(ValueError, match="reset must be"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], reset=reset[:, :3])
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], impl="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: mamba-ssm kernel path not run")
def test_cuda_kernel_refuses_resets_and_matches_without():
    pytest.importorskip("mamba_ssm", reason="mamba-ssm not installed (GPU extra)")
    inputs, reset = make_inputs(dtype=torch.float32)
    cuda = {k: v.cuda() for k, v in inputs.items()}
    args = (cuda["u"], cuda["delta"], cuda["A"], cuda["B"], cuda["C"])
    with pytest.raises(ValueError, match="no reset"):
        selective_scan(*args, reset=reset.cuda(), impl="cuda")
    torch.testing.assert_close(selective_scan(*args, impl="cuda"), selective_scan(*args, impl="parallel"),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [1, 7, 8, 37, 203])
@pytest.mark.parametrize("chunk_steps", [None, 5, 16])  # one chunk, or chunks L is not a multiple of
@pytest.mark.parametrize("two_level", [True, False])
def test_parallel_matches_loop_float32_every_walk(monkeypatch, length, chunk_steps, two_level):
    """float32 vs the float64 loop within 1e-5: plain and two-level walks, ragged chunks and blocks."""
    batch, d_inner, d_state = 3, 5, 6
    if chunk_steps:
        monkeypatch.setattr(scan_mod, "_CHUNK_ELEMENTS", batch * d_inner * d_state * chunk_steps)
    monkeypatch.setattr(scan_mod, "_TWO_LEVEL_MAX_ELEMENTS", 1 << 30 if two_level else 0)
    inputs, reset = make_inputs(batch, d_inner, d_state, length=length)
    y_ref, last_ref, g_ref = run("loop", inputs, reset)
    y, last, g = run("parallel", {k: v.float() for k, v in inputs.items()}, reset)
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref.float(), rtol=1e-5, atol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name].float(), rtol=1e-5, atol=1e-5, msg=f"grad {name}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("steps,block", [(12, 12), (12, 4), (12, 3), (10, 5), (9, 1)])
def test_linear_scan_matches_a_plain_loop(reverse, steps, block):
    """The in-place walk, one or two levels, equals x_{t+1} += l_t x_t (or its reverse) step by step."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(steps, 2, 3, generator=g, dtype=torch.float64)
    links = torch.rand(steps, 2, 3, generator=g, dtype=torch.float64) * 1.5
    links[4] = 0.0  # a reset-like cut
    expected = x.clone()
    order = range(steps - 2, -1, -1) if reverse else range(steps - 1)
    for t in order:
        if reverse:
            expected[t] += links[t] * expected[t + 1]
        else:
            expected[t + 1] += links[t] * expected[t]
    buf = torch.empty(1 if block == steps else 2, steps, 2, 3, dtype=torch.float64)
    buf[0] = x
    scan_mod._linear_scan_(buf, links, block, reverse)
    torch.testing.assert_close(buf[0], expected, rtol=1e-12, atol=1e-12)


needs_kernel = pytest.mark.skipif(cpu_kernel.load() is None, reason="no C compiler for the CPU scan kernel")


@needs_kernel
@pytest.mark.parametrize("length", [1, 7, 64, 203])  # around and past dA's 32-step float blocks
@pytest.mark.parametrize("d_state", [6, 16, 17])
@pytest.mark.parametrize("split", [False, True])  # one call, or the work split over three threads
def test_cpu_kernel_matches_loop_float32(monkeypatch, length, d_state, split):
    """The compiled kernel in float32 vs the float64 loop within 1e-5: y, last state and every gradient.

    37 channels: two full 16-channel blocks and a partial one per batch row (3 rows: 9 blocks)."""
    if split:  # uneven parts: the 9 blocks as 2 / 5 / 2, so parts start and end inside a batch row
        parts = lambda n, **kw: [(0, n // 4), (n // 4, n - n // 7), (n - n // 7, n)]  # noqa: E731
        monkeypatch.setattr(cpu_kernel, "_row_ranges", parts)
    inputs, reset = make_inputs(3, 37, d_state, length=length)
    y_ref, last_ref, g_ref = run("loop", inputs, reset)
    y, last, g = run("cpu", {k: v.float() for k, v in inputs.items()}, reset)
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref.float(), rtol=1e-5, atol=1e-5)
    for name in g_ref:
        # A, D and delta_bias gradients are sums over batch and time (600 float32 terms at L = 203): their
        # rounding scales with the tensor's size, so they are held to 1e-5 of its largest entry
        atol = 1e-5 * max(1.0, g_ref[name].abs().max().item()) if name in ("A", "D", "delta_bias") else 1e-5
        torch.testing.assert_close(g[name], g_ref[name].float(), rtol=1e-5, atol=atol, msg=f"grad {name}")


@needs_kernel
@pytest.mark.parametrize("batch,length", [(3, 45), (1, 45), (3, 1)])  # size-1 axes may carry any stride
def test_cpu_kernel_reads_B_and_C_in_place_from_a_wider_projection(batch, length):
    """B and C as the Mamba mixer passes them: (b, n, L) views of slices of one (b, L, 2 + 2n) projection, which
    the kernel reads without a copy; y, last state and the projection's gradient vs the float64 loop."""
    inputs, reset = make_inputs(batch, 21, 16, length=length, resets="mixed" if batch == 3 else "none")
    g = torch.Generator().manual_seed(3)
    proj = torch.randn(batch, length, 2 + 2 * 16, generator=g, dtype=torch.float64)
    outs = {}
    for impl, dtype in (("loop", torch.float64), ("cpu", torch.float32)):
        x = proj.to(dtype).requires_grad_()
        B, C = x[..., 2:18].transpose(1, 2), x[..., 18:].transpose(1, 2)
        if impl == "cpu":
            assert cpu_kernel.step_rows(B.transpose(1, 2)).data_ptr() == B.data_ptr()  # no copy
        rest = {k: v.to(dtype) for k, v in inputs.items() if k not in ("B", "C")}
        y, last = selective_scan(rest["u"], rest["delta"], rest["A"], B, C, rest["D"], rest["z"], rest["delta_bias"],
                                 True, reset, rest["initial_state"], return_last_state=True, impl=impl)
        w = torch.Generator().manual_seed(4)
        loss = (y * torch.randn(y.shape, generator=w, dtype=torch.float64).to(dtype)).sum() + last.sum()
        outs[impl] = (y.detach(), last.detach(), torch.autograd.grad(loss, x)[0])
    for got, want in zip(outs["cpu"], outs["loop"]):
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_cpu_kernel_without_reset_state_or_last_state_gradient():
    """No reset, no initial state, y alone: the kernel's optional inputs, vs the float64 loop."""
    inputs, _ = make_inputs(2, 4, 16, length=50, resets="none")
    keys = ("u", "delta", "A", "B", "C")
    leaves = [{k: inputs[k].to(dtype).clone().requires_grad_() for k in keys} for dtype in (torch.float64, torch.float32)]
    outs = [selective_scan(**lv, delta_softplus=True, impl=impl) for lv, impl in zip(leaves, ("loop", "cpu"))]
    torch.testing.assert_close(outs[1], outs[0].float(), rtol=1e-5, atol=1e-5)
    weights = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for out in outs:
        (out * weights.to(out.dtype)).sum().backward()
    for k in keys:
        torch.testing.assert_close(leaves[1][k].grad, leaves[0][k].grad.float(), rtol=1e-5, atol=1e-5, msg=k)


@needs_kernel
@pytest.mark.parametrize("with_D", [False, True])
@pytest.mark.parametrize("with_z", [False, True])
@pytest.mark.parametrize("bias_softplus", [(False, False), (True, False), (False, True), (True, True)])
def test_cpu_kernel_fused_prologue_and_epilogue_match_loop(with_D, with_z, bias_softplus):
    """The kernel's fused element-wise parts (delta bias, softplus, D skip, z gate), each present or absent,
    vs the float64 loop within 1e-5: y, last state and every gradient."""
    with_bias, softplus = bias_softplus
    inputs, reset = make_inputs(3, 21, 16, length=45)
    if not softplus:  # raw step sizes must stay positive: a decay exp(dt * A) above 1 would blow up
        inputs["delta"] = inputs["delta"].abs() + 0.5  # (delta_bias is ~0.1)
    optional = {"D": with_D, "z": with_z, "delta_bias": with_bias}

    def run_opt(impl, dtype):
        leaves = {k: v.to(dtype).clone().requires_grad_() for k, v in inputs.items() if optional.get(k, True)}
        y, last = selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves.get("D"),
                                 leaves.get("z"), leaves.get("delta_bias"), softplus, reset, leaves["initial_state"],
                                 return_last_state=True, impl=impl)
        g = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype)).sum() for t in (y, last))
        return y.detach(), last.detach(), dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    y_ref, last_ref, g_ref = run_opt("loop", torch.float64)
    y, last, g = run_opt("cpu", torch.float32)
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref.float(), rtol=1e-5, atol=1e-5)
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        atol = 1e-5 * max(1.0, g_ref[name].abs().max().item()) if name in ("A", "D", "delta_bias") else 1e-5
        torch.testing.assert_close(g[name], g_ref[name].float(), rtol=1e-5, atol=atol, msg=f"grad {name}")


@needs_kernel
def test_cpu_kernel_softplus_matches_float64_over_its_whole_range():
    """The kernel's softplus of delta + bias and its gradient (sigmoid) vs float64 torch, elementwise, over
    [-40, 40]: the e^x tail, the cancelling middle, and torch's threshold (x > 20 gives x)."""
    lib = cpu_kernel.load()
    raw = torch.linspace(-40, 40, 3 * 2 * 1001, dtype=torch.float64).reshape(3, 2, 1001)
    bias = torch.tensor([0.0, 0.25], dtype=torch.float64)
    x = (raw.float() + bias.float()[:, None]).double()  # the float32 sum the kernel takes softplus of
    g_dt = torch.randn(raw.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dt = cpu_kernel.dt_forward(lib, raw.float(), bias.float(), True)
    torch.testing.assert_close(dt, torch.nn.functional.softplus(x).float(), rtol=1e-5, atol=0)
    g_raw, g_bias = cpu_kernel.dt_backward(lib, raw.float(), bias.float(), True, g_dt.float())
    torch.testing.assert_close(g_raw, (g_dt * torch.sigmoid(x)).float(), rtol=1e-5, atol=1e-30)
    torch.testing.assert_close(g_bias, (g_dt * torch.sigmoid(x)).sum((0, 2)).float(), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_cpu_kernel_propagates_nan():
    """A NaN input must stay visible downstream (the divergence guard relies on it), as in the loop."""
    inputs, reset = make_inputs(3, 3, 16, length=20, dtype=torch.float32)
    inputs["u"][1, 2, 5] = float("nan")
    y = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], reset=reset, impl="cpu")
    ref = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], reset=reset, impl="loop")
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any()


def test_auto_uses_the_kernel_for_float32_cpu_and_falls_back_without_it(monkeypatch):
    inputs, reset = make_inputs(3, 3, 4, length=9, dtype=torch.float32)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    available = cpu_kernel.load() is not None
    assert scan_mod._resolve_impl("auto", inputs["u"], reset, None) == ("cpu" if available else "parallel")
    assert scan_mod._resolve_impl("auto", inputs["u"].double(), reset, None) == "parallel"
    monkeypatch.setattr(cpu_kernel, "load", lambda: None)
    assert scan_mod._resolve_impl("auto", inputs["u"], reset, None) == "parallel"
    with pytest.raises(ValueError, match="impl='cpu' needs"):
        selective_scan(*args, impl="cpu")


def test_kernel_build_is_cached_atomic_and_optional(monkeypatch, tmp_path):
    """A build lands in the cache folder in one piece; without a compiler the loader says None, never raises."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="no-such-compiler.*slower PyTorch path"):
        assert cpu_kernel.load() is None
    if shutil.which("cc") is None:
        return
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setenv("CC", shutil.which("cc"))
    assert cpu_kernel.load() is not None
    built = sorted(p.name for p in (tmp_path / "resel" / "kernels").iterdir())
    assert len(built) == 1 and built[0].endswith(".so")  # no temporary file left behind
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setenv("RESEL_CPU_KERNEL", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switched off on purpose: no warning
        assert cpu_kernel.load() is None
