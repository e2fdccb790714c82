"""Triton selective scan (resel_train.ops.triton_scan) against the loop reference.

On a CUDA machine the compiled kernels run on the GPU. Without one, the kernels run in Triton's
interpreter on CPU tensors. ``triton.jit`` reads TRITON_INTERPRET when a kernel is *decorated*,
and that includes triton's own library functions (``tl.sum`` ...), so the variable must be set
before ``triton`` itself is imported:
- usual case (triton not imported yet when this file is collected, no GPU): set it at the top
  of this file, for the rest of the process (triton also reads it lazily while interpreting, so
  it cannot be restored after the imports). On a CPU-only machine triton can only run
  interpreted anyway, so this cannot break other tests.
- triton already imported without it (another test module imported it first): the in-process
  tests are skipped and ``test_in_interpreter_subprocess`` runs this file in a fresh interpreter
  with TRITON_INTERPRET=1.
Sizes are small on purpose: the interpreter runs ``tl.associative_scan`` with a user combine
function element by element (~50 us per element of a (BLOCK_D, d_state, chunk) tile).
"""

import os
import subprocess
import sys

import pytest
import torch

from resel_train import selective_scan

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
_SKIP_REASON = "triton is not installed (GPU extra, pip install 'resel[triton]'): Triton scan not tested"

if not ON_GPU and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton", reason=_SKIP_REASON)
from triton.runtime.jit import JITFunction

import resel_train.ops.triton_scan as ts

# the in-process tests can run: on the GPU, or with triton and our kernels built for the interpreter
IN_PROCESS = ON_GPU or (ts._interpreted() and not isinstance(triton.language.sum, JITFunction))
in_process = pytest.mark.skipif(
    not IN_PROCESS, reason="triton was imported without TRITON_INTERPRET: run by test_in_interpreter_subprocess"
)


def make_inputs(batch=3, d_inner=5, d_state=6, length=37, dtype=torch.float64, seed=0, resets="mixed"):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    inputs = {
        "u": r(batch, d_inner, length), "delta": r(batch, d_inner, length) * 0.5,
        "A": -torch.rand(d_inner, d_state, generator=g, dtype=dtype) * 3 - 0.1,
        "B": r(batch, d_state, length), "C": r(batch, d_state, length), "D": r(d_inner),
        "z": r(batch, d_inner, length), "delta_bias": r(d_inner) * 0.1,
        "initial_state": r(batch, d_inner, d_state),
    }
    reset = torch.zeros(batch, length, dtype=torch.bool)
    if resets == "mixed":
        reset[0, 0] = True  # reset at t=0 (initial state discarded) ...
        reset[0, 9:12] = True  # ... consecutive resets (when L > 9) ...
        reset[0, 16:17] = True  # ... a reset on a chunk-16 boundary (when L > 16) ...
        reset[min(1, batch - 1), length - 1] = True  # ... and one at the last step
        if batch > 2:
            reset[2] = torch.rand(length, generator=g) < 0.15
    return {k: v.to(DEVICE) for k, v in inputs.items()}, reset.to(DEVICE)


def run(inputs, reset, impl="triton", softplus=True, drop=(), grad_seed=1, weights_in=None, **kw):
    """y, last state and all gradients of a random linear loss on both outputs. The loss weights
    are drawn in float64 and rounded through ``weights_in`` (when given), so runs in different
    dtypes see the same weights."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k not in drop}
    args = {"D": None, "z": None, "delta_bias": None, "initial_state": None}
    args.update({k: v for k, v in leaves.items() if k in args})
    core = [leaves[k] for k in ("u", "delta", "A", "B", "C")]
    if kw:  # direct call with tuning arguments (chunk, block_d)
        y, last = ts.selective_scan_triton(
            *core, args["D"], args["z"], args["delta_bias"], softplus, reset, args["initial_state"], True, **kw
        )
    else:
        y, last = selective_scan(*core, **args, delta_softplus=softplus, reset=reset, return_last_state=True,
                                 impl=impl)
    g = torch.Generator().manual_seed(grad_seed)

    def weights(like):
        w = torch.randn(like.shape, generator=g, dtype=torch.float64)
        return (w if weights_in is None else w.to(weights_in)).to(like.dtype).to(like.device)

    loss = (y * weights(y)).sum()
    loss = loss + (last * weights(last)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y.detach(), last.detach(), dict(zip(leaves, grads))


def assert_matches(got, ref, rtol, atol):
    (y, last, g), (y_ref, last_ref, g_ref) = got, ref
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol, msg=lambda m: f"y: {m}")
    torch.testing.assert_close(last, last_ref, rtol=rtol, atol=atol, msg=lambda m: f"last state: {m}")
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert g[name] is not None, f"no gradient for {name}"
        torch.testing.assert_close(g[name], g_ref[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"grad {n}: {m}")


@in_process
def test_dispatch_float64_all_features():
    """selective_scan(impl="triton"): resets at t=0, consecutive and at the last step; initial
    state; bias + softplus, D, z; L=37 / d_state=6 in one chunk (the default) of a 64-step tile
    with 27 masked steps. Multi-chunk paths are covered below with explicit chunks."""
    inputs, reset = make_inputs()
    assert ts.default_chunk(37, 6) == 64
    inputs["delta"][0, :, 5] = 25.0  # softplus above its threshold (identity) ...
    inputs["delta"][1, :, 7] = -30.0  # ... and far below it (log1p(exp(x)) without cancellation)
    assert_matches(run(inputs, reset), run(inputs, reset, impl="loop"), rtol=1e-10, atol=1e-10)


@in_process
@pytest.mark.parametrize(
    "drop, softplus, with_reset",
    [
        (("z",), True, True),  # z=None
        (("D",), True, True),  # D=None
        (("z", "D", "delta_bias", "initial_state"), False, False),  # bare scan: no extras at all
    ],
    ids=["no_z", "no_D", "bare"],
)
def test_optional_inputs_float64(drop, softplus, with_reset):
    inputs, reset = make_inputs(batch=2, length=21, seed=1)
    reset = reset if with_reset else None
    ref = run(inputs, reset, impl="loop", softplus=softplus, drop=drop)
    got = run(inputs, reset, softplus=softplus, drop=drop, chunk=8)
    assert_matches(got, ref, rtol=1e-10, atol=1e-10)


@in_process
def test_several_channel_blocks_and_chunks():
    """d_inner=5 split into blocks of 2 (a partial last block): B/C gradients are atomic sums over
    three programs; 3-step chunks (a 4-step tile with one masked step) and a partial last chunk
    of 2 steps (L=11)."""
    inputs, reset = make_inputs(batch=2, length=11, seed=2)
    reset[1, 3] = True  # chunk boundary
    ref = run(inputs, reset, impl="loop")
    assert_matches(run(inputs, reset, chunk=3, block_d=2), ref, rtol=1e-10, atol=1e-10)


def as_float64(result):
    y, last, grads = result
    return y.double(), last.double(), {k: v.double() for k, v in grads.items()}


def float64_copies(inputs):
    return {k: v.double() for k, v in inputs.items()}


@in_process
def test_float32_matches_float64_loop():
    inputs, reset = make_inputs(dtype=torch.float32, seed=3)
    ref = run(float64_copies(inputs), reset, impl="loop", weights_in=torch.float32)
    got = run(inputs, reset, chunk=16, weights_in=torch.float32)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    # GPU exp is approximate (ex2.approx)
    assert_matches(as_float64(got), ref, rtol=1e-5, atol=5e-6 if ON_GPU else 1e-6)


@in_process
def test_many_chunks_resets_on_chunk_edges_float32():
    """L=100 in chunks of 16 (six full chunks and a partial one of 4 steps), 12 channels in blocks
    of 4 (dB/dC summed over three programs), d_state 5. Resets at t=0, on the last and first step
    of chunks (15, 16, 32, 47, 48, 96), consecutive (60-63) and at the last step (99)."""
    inputs, _ = make_inputs(batch=2, d_inner=12, d_state=5, length=100, dtype=torch.float32, seed=8)
    reset = torch.zeros(2, 100, dtype=torch.bool, device=DEVICE)
    reset[0, [0, 15, 16, 32, 60, 61, 62, 63, 99]] = True
    reset[1, [47, 48, 96, 99]] = True
    ref = run(float64_copies(inputs), reset, impl="loop", weights_in=torch.float32)
    got = run(inputs, reset, chunk=16, block_d=4, weights_in=torch.float32)
    assert_matches(as_float64(got), ref, rtol=1e-5, atol=5e-6 if ON_GPU else 1e-6)


@in_process
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_inputs(half):
    """u, delta, B, C, z in fp16/bf16 (A, D, delta_bias, initial state fp32, as under autocast),
    fp32 state and accumulation inside. Reference: the float64 loop on the same (rounded) values.
    The loss weights are representable in the half type, so both runs see the same grad_y. The
    outputs in the half type (y, du, ddelta, dz, dB, dC) carry one rounding: rtol = its epsilon;
    the fp32 outputs (last state, dA, dD, delta_bias, initial state) must match to fp32 accuracy."""
    eps = torch.finfo(half).eps
    inputs, reset = make_inputs(batch=2, d_inner=8, d_state=6, length=40, dtype=torch.float32, seed=9)
    for k in ("u", "delta", "B", "C", "z"):
        inputs[k] = inputs[k].to(half)
    got = run(inputs, reset, chunk=16, weights_in=half)
    ref = run(float64_copies(inputs), reset, impl="loop", weights_in=half)
    assert got[0].dtype == half and got[1].dtype == torch.float32
    y, last, grads = as_float64(got)
    y_ref, last_ref, grads_ref = ref

    def scale(t):
        return float(t.abs().max())

    torch.testing.assert_close(y, y_ref, rtol=eps, atol=eps * 1e-2 * scale(y_ref))
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-6)
    for name in grads_ref:
        low = inputs[name].dtype == half
        rtol, atol = (eps, eps * 1e-2 * scale(grads_ref[name])) if low else (1e-5, 1e-5 * scale(grads_ref[name]))
        assert grads[name] is not None and got[2][name].dtype == inputs[name].dtype, name
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=rtol, atol=atol,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@in_process
def test_forward_only_stores_no_checkpoints(monkeypatch):
    """Without a gradient the forward skips the checkpoint writes (and saves nothing); the
    outputs are unchanged."""
    calls = []
    real = torch.autograd.function.FunctionCtx.save_for_backward
    monkeypatch.setattr(torch.autograd.function.FunctionCtx, "save_for_backward",
                        lambda ctx, *ts_: calls.append(len(ts_)) or real(ctx, *ts_))
    inputs, reset = make_inputs(batch=2, length=37, seed=10)
    args = {k: inputs[k] for k in ("D", "z", "delta_bias", "initial_state")}
    core = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    with torch.no_grad():
        y, last = ts.selective_scan_triton(*core, **args, delta_softplus=True, reset=reset,
                                           return_last_state=True, chunk=16)
    assert calls == []
    y_ref, last_ref = selective_scan(*core, **args, delta_softplus=True, reset=reset, return_last_state=True,
                                     impl="loop")
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


@in_process
def test_length_one_and_chunk_one():
    inputs, reset = make_inputs(batch=2, length=1, seed=4)
    reset[0, 0] = True
    assert_matches(run(inputs, reset), run(inputs, reset, impl="loop"), rtol=1e-10, atol=1e-10)
    inputs, reset = make_inputs(batch=1, length=4, seed=5)
    assert_matches(run(inputs, reset, chunk=1), run(inputs, reset, impl="loop"), rtol=1e-10, atol=1e-10)


@in_process
def test_strided_inputs_and_unused_outputs():
    """Non-contiguous u/delta/B/C/z (strides are passed to the kernels, not assumed) and losses
    that use only y or only the last state (the other output's gradient is None)."""
    inputs, reset = make_inputs(batch=2, length=9, seed=6)
    strided = dict(inputs)
    for k in ("u", "delta", "z"):
        strided[k] = inputs[k].transpose(1, 2).contiguous().transpose(1, 2)
    for k in ("B", "C"):
        strided[k] = inputs[k].permute(2, 0, 1).contiguous().permute(1, 2, 0)
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    kw = {"D": inputs["D"], "z": strided["z"], "delta_bias": inputs["delta_bias"], "delta_softplus": True,
          "reset": reset, "initial_state": inputs["initial_state"]}
    core = [strided[k] for k in ("u", "delta", "A", "B", "C")]

    y = selective_scan(*core, **kw, impl="triton")
    assert isinstance(y, torch.Tensor)
    y_ref = selective_scan(*core, **kw, impl="loop")
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)

    for which in (0, 1):
        leaves = [t.detach().requires_grad_() for t in core]
        ref_leaves = [t.detach().requires_grad_() for t in core]
        out = selective_scan(*leaves, **kw, return_last_state=True, impl="triton")[which]
        out_ref = selective_scan(*ref_leaves, **kw, return_last_state=True, impl="loop")[which]
        got = torch.autograd.grad(out.square().sum(), leaves, materialize_grads=True)
        want = torch.autograd.grad(out_ref.square().sum(), ref_leaves, materialize_grads=True)  # C unused by last
        for name, a, b in zip(["u", "delta", "A", "B", "C"], got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, n=name, w=which: f"{w} {n}: {m}")


@in_process
def test_checkpoint_memory_is_bounded(monkeypatch):
    """The forward saves ceil(L / chunk) boundary states, not the (batch, d_inner, L, d_state) history."""
    saved = {}
    real = torch.autograd.function.FunctionCtx.save_for_backward

    def spy(ctx, *tensors):
        saved["numel"] = sum(t.numel() for t in tensors if t is not None and t.dim() == 4)
        return real(ctx, *tensors)

    monkeypatch.setattr(torch.autograd.function.FunctionCtx, "save_for_backward", spy)
    inputs, reset = make_inputs(batch=1, d_inner=2, d_state=3, length=10, seed=7)
    u = inputs["u"].requires_grad_()
    ts.selective_scan_triton(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"], reset=reset, chunk=4)
    assert saved["numel"] == 1 * 3 * 2 * 3  # 3 checkpoints of (batch=1, d_inner=2, d_state=3)


def test_importing_resel_train_does_not_import_triton():
    code = "import sys, resel_train, resel_train.ops.scan; assert 'triton' not in sys.modules, 'triton imported'"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


_AOT_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import resel_train.ops.triton_scan as ts

assert not ts._interpreted()
FLAGS = ("HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS", "HAS_RESET", "HAS_H0", "HAS_GLAST", "STORE_CKPT")
IO_PTRS = ("u_ptr", "delta_ptr", "A_ptr", "B_ptr", "C_ptr", "D_ptr", "z_ptr", "bias_ptr", "h0_ptr", "y_ptr",
           "gy_ptr", "du_ptr", "ddelta_ptr", "dz_ptr")

def build(kernel, io, on, bd, bn, chunk, num_warps):
    consts = {n: on for n in FLAGS if n in kernel.arg_names}
    consts.update(CHUNK=chunk, T_TILE=ts._next_pow2(chunk), BLOCK_D=bd, BLOCK_N=bn)
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (io if name in IO_PTRS else "fp32")
        else:
            sig[name] = "i32"
    k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=num_warps))
    assert k.asm["cubin"], "no cubin"


# every autotune candidate at the paper's size (d_inner 512, d_state 64, L 1000), fp32, all features
chunk = ts.default_chunk(1000, 64)
for kind, kernel in (("fwd", ts._scan_fwd_kernel), ("bwd", ts._scan_bwd_kernel)):
    configs = ts._pruner(kind)(ts._CONFIGS, {"d_inner": 512}, BLOCK_N=64, T_TILE=ts._next_pow2(chunk))
    assert len(configs) > 1, (kind, configs)
    for cfg in configs:
        build(kernel, "fp32", True, cfg.kwargs["BLOCK_D"], 64, chunk, cfg.num_warps)
    # bf16 inputs, no optional features, a chunk that is not a power of two
    build(kernel, "bf16", False, 4, 16, 24, 4)
print("ok")
"""


@pytest.mark.skipif(ON_GPU, reason="on a GPU the kernels are compiled and run by the tests above")
def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter does not type-check like the compiler does: build both kernels (every
    autotune candidate at the paper's size, and a bf16 variant) ahead of time
    for sm_90 (TTIR -> PTX -> cubin with triton's bundled ptxas), no GPU needed, no launch."""
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("this triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT], check=False, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.skipif(IN_PROCESS, reason="the tests ran in this process")
def test_in_interpreter_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "not subprocess"],
        check=False, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
