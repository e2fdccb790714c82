"""CPU kernels for the Mamba mixer (``cpu_ops.c``): built once with the system C compiler, called via ctypes.

Why kernels: a Mamba-1 scan has a separate decay per (channel, state) pair, so any tensor-op form
materialises the (L, batch, d_state, d_inner) state history several times per call, and at the
sizes RESeL trains on a CPU that memory traffic (and the dispatch of hundreds of small ops) costs
5-10x the arithmetic. The scan kernel walks each batch row once, 16 channels at a time, with their
states in registers; the element-wise work around it (delta bias and
softplus before, D skip and z gate after) is one compiled pass each way instead of ~16 small tensor
ops. The reset-aware causal conv is the same story at a smaller scale: a masked multiply-add per
tap in tensor ops, one short loop per row here. The Mamba block's RMSNorm is one pass each way
instead of ~7 ops forward and ~12 backward. ELU, the activation of every MLP, is there too:
torch's CPU ELU costs ~3x a vectorised exp, and its backward recomputes that exp, where the output
alone gives the derivative. The GRU
has no fused reset-aware CPU path in torch (``nn.GRU`` runs ~10 ops per time step there, forward
and backward); here it is one loop per batch row over the time steps.
``resel_train.ops.mamba_cpu`` chains the mixer's kernels (conv, scan, its prologue and epilogue) and its
projections into one autograd node, and the whole Mamba encoder around them into another;
``resel_train.ops.ensemble_cpu`` does the same for the critic's ensemble heads, so none runs an autograd
node per op.

The shared library is compiled on first use into ``$XDG_CACHE_HOME/resel/kernels`` (default
``~/.cache``), keyed by the source, the compiler and this CPU, and written atomically, so concurrent
first uses never see a partial file. No Python or torch headers are involved: a build takes well
under a second. Without a working C compiler (or with ``RESEL_CPU_KERNEL=0``) :func:`load` returns
None, with a one-time warning saying why, and the ops fall back to their PyTorch implementations,
which compute the same functions.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("cpu_ops.c")
_FLAG_SETS = (["-O3", "-march=native", "-fno-trapping-math", "-fopenmp-simd"], ["-O3", "-fno-trapping-math"], ["-O3"])
_LOCK = threading.Lock()
LANES = 16  # channels per block of the scan kernel, forward and backward (``LANES`` in cpu_ops.c)
_STATE: dict[str, object] = {}


def _cpu_identity() -> str:
    """What a -march=native build depends on (a cache shared between machines must not mix them)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resel" / "kernels"


def _build(compiler: str) -> Path | None:
    source = _SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    for flags in _FLAG_SETS:
        key = hashlib.sha256(source + version.encode() + " ".join(flags).encode() + _cpu_identity().encode())
        target = _cache_dir() / f"cpu_ops-{key.hexdigest()[:16]}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
        os.close(fd)
        try:
            done = subprocess.run([compiler, *flags, "-shared", "-fPIC", "-o", tmp, str(_SOURCE)],
                                  capture_output=True, timeout=120)
            if done.returncode == 0:
                os.replace(tmp, target)
                return target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return None


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first call; None when disabled or when they cannot be built
    (then once a warning says why: the PyTorch path computes the same, only slower)."""
    with _LOCK:
        if "lib" not in _STATE:
            _STATE["lib"], problem = _try_load()
            if problem:
                warnings.warn(f"resel: {problem}; the CPU sequence ops run on the slower PyTorch path instead "
                              "(same results; set RESEL_CPU_KERNEL=0 to skip the kernels and this message)",
                              RuntimeWarning, stacklevel=2)
        return _STATE["lib"]  # type: ignore[return-value]


def _try_load() -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None), or (None, what went wrong); (None, None) when switched off by RESEL_CPU_KERNEL=0."""
    if os.environ.get("RESEL_CPU_KERNEL", "1") == "0":
        return None, None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        return None, "no C compiler (cc, gcc or clang) was found to build the CPU kernels (install one)"
    try:
        path = _build(compiler)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"building the CPU kernels with {compiler} failed ({exc})"
    if path is None:
        return None, f"{compiler} could not compile {_SOURCE.name}"
    try:
        return _bind(ctypes.CDLL(str(path))), None
    except OSError as exc:
        return None, f"loading the CPU kernels from {path} failed ({exc})"


# (pointer arguments, int64 arguments) of each exported function of cpu_ops.c
_SIGNATURES = {
    "resel_scan_forward": (9, 8), "resel_scan_backward": (15, 8),
    "resel_conv_forward": (7, 5), "resel_conv_backward": (10, 5),
    "resel_gru_forward": (7, 4), "resel_gru_backward": (10, 4),
    "resel_elu_forward": (2, 1), "resel_elu_backward": (3, 1),
    "resel_elu_members_forward": (2, 3), "resel_elu_members_backward": (3, 3),
    "resel_rms_norm_forward": (5, 2), "resel_rms_norm_backward": (6, 2),
    "resel_dt_forward": (3, 4), "resel_dt_backward": (5, 4),
    "resel_gate_forward": (6, 3), "resel_gate_backward": (9, 3),
}


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, (pointers, ints) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64] * ints
        fn.restype = None
    return lib


def applies_to(x: Tensor) -> bool:
    """Whether an op on ``x`` runs its kernel: a float32 CPU tensor, kernels built, not while tracing for export."""
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    return x.device.type == "cpu" and x.dtype == torch.float32 and not tracing and load() is not None


def as_bool(reset: Tensor | None) -> Tensor | None:
    """``reset`` as bool, converting only when needed (even a no-op ``.to`` is an op dispatched per call)."""
    return reset if reset is None or reset.dtype == torch.bool else reset.to(torch.bool)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _row_ranges(rows: int, min_rows: int = 4) -> list[tuple[int, int]]:
    """Rows split over torch's intra-op threads (ctypes releases the GIL during each call)."""
    parts = max(1, min(torch.get_num_threads(), rows // min_rows))
    edges = [rows * k // parts for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _run_split(fn, ranges: list[tuple[int, int]]) -> None:
    """``fn(k, begin, end)`` for every range, the first on this thread and the rest on a shared pool."""
    if len(ranges) == 1:
        fn(0, *ranges[0])
        return
    with _LOCK:
        pool = _STATE.get("pool")
        if pool is None or pool._max_workers < len(ranges) - 1:  # grows with torch's thread count
            pool = _STATE["pool"] = ThreadPoolExecutor(len(ranges) - 1, thread_name_prefix="resel-kernel")
    others = [pool.submit(fn, k, *ranges[k]) for k in range(1, len(ranges))]
    fn(0, *ranges[0])
    for job in others:
        job.result()


def _step_stride(t: Tensor) -> int:
    """Floats from one step of a (batch, L, n) tensor to the next, as the kernel walks them (batch b starts at
    b * L * stride); a size-1 axis may carry any stride, so it is read from the axis that matters."""
    batch, length, n = t.shape
    return t.stride(1) if length > 1 else t.stride(0) if batch > 1 else n


def step_rows(t: Tensor) -> Tensor:
    """A (batch, L, n) tensor as the scan kernel reads B and C: each step's n values contiguous and the steps
    evenly strided (a slice of a wider projection is, and is then read in place); a copy when not."""
    batch, length, n = t.shape
    if (n == 1 or t.stride(2) == 1) and (batch == 1 or t.stride(0) == length * _step_stride(t)):
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


def scan_forward(lib: ctypes.CDLL, u: Tensor, dt: Tensor, A: Tensor, B_l: Tensor, C_l: Tensor,
                 reset: Tensor | None, h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """y (batch, d_inner, L) and the last state (batch, d_inner, d_state); B_l, C_l are (batch, L, d_state), their
    rows any stride apart (see :func:`step_rows`)."""
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    blocks = batch * -(-d_inner // LANES)
    y = u.new_empty(batch, d_inner, length)
    last = u.new_empty(batch, d_inner, d_state)

    def part(_k: int, begin: int, end: int) -> None:
        lib.resel_scan_forward(_ptr(u), _ptr(dt), _ptr(A), _ptr(B_l), _ptr(C_l), _ptr(reset), _ptr(h0), _ptr(y),
                               _ptr(last), batch, d_inner, length, d_state, _step_stride(B_l), _step_stride(C_l), begin, end)

    _run_split(part, _row_ranges(blocks))
    return y, last


def scan_backward(lib: ctypes.CDLL, u: Tensor, dt: Tensor, A: Tensor, B_l: Tensor, C_l: Tensor,
                  reset: Tensor | None, h0: Tensor | None, dy: Tensor, dlast: Tensor | None) -> tuple[Tensor, ...]:
    """Gradients (du, ddt, dA, dB_l, dC_l, dh0) of the forward's (y, last) given (dy, dlast)."""
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    ranges = _row_ranges(batch * -(-d_inner // LANES))
    du, ddt = torch.empty_like(u), torch.empty_like(u)
    dh0 = torch.empty_like(h0) if h0 is not None else None
    # per thread: dA sums over the batch, dB and dC over the channels, so thread parts are summed after
    dA = A.new_zeros(len(ranges), d_inner, d_state)
    dB = B_l.new_zeros(len(ranges), *B_l.shape)
    dC = C_l.new_zeros(len(ranges), *C_l.shape)

    def part(k: int, begin: int, end: int) -> None:
        lib.resel_scan_backward(_ptr(u), _ptr(dt), _ptr(A), _ptr(B_l), _ptr(C_l), _ptr(reset), _ptr(h0),
                                _ptr(dy), _ptr(dlast), _ptr(du), _ptr(ddt), _ptr(dA[k]), _ptr(dB[k]), _ptr(dC[k]),
                                _ptr(dh0), batch, d_inner, length, d_state, _step_stride(B_l), _step_stride(C_l), begin, end)

    _run_split(part, ranges)
    return du, ddt, dA.sum(0), dB.sum(0), dC.sum(0), dh0


def dt_forward(lib: ctypes.CDLL, raw: Tensor, bias: Tensor | None, softplus: bool) -> Tensor:
    """The scan's step sizes: softplus(raw + bias) (or without either part); ``raw`` itself when neither applies."""
    if bias is None and not softplus:
        return raw
    dt = torch.empty_like(raw)
    lib.resel_dt_forward(_ptr(raw), _ptr(bias), _ptr(dt), raw.shape[0] * raw.shape[1], raw.shape[1], raw.shape[2],
                         int(softplus))
    return dt


def dt_backward(lib: ctypes.CDLL, raw: Tensor, bias: Tensor | None, softplus: bool, g_dt: Tensor
                ) -> tuple[Tensor, Tensor | None]:
    """Gradients (g_raw, g_bias) of :func:`dt_forward` given the gradient at its output."""
    if bias is None and not softplus:
        return g_dt, None
    g_raw = torch.empty_like(raw)
    g_bias = None if bias is None else torch.empty_like(bias)
    lib.resel_dt_backward(_ptr(raw), _ptr(bias), _ptr(g_dt), _ptr(g_raw), _ptr(g_bias), raw.shape[0] * raw.shape[1],
                          raw.shape[1], raw.shape[2], int(softplus))
    return g_raw, g_bias


def gate_forward(lib: ctypes.CDLL, y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, keep: bool
                 ) -> tuple[Tensor, Tensor | None]:
    """(y + D u) * silu(z) (either part optional; ``y`` itself when neither applies) and, when ``keep`` and z is
    given, y + D u for the backward."""
    if D is None and z is None:
        return y, None
    out = torch.empty_like(y)
    y_pre = torch.empty_like(y) if keep and z is not None else None
    lib.resel_gate_forward(_ptr(y), _ptr(u), _ptr(D), _ptr(z), _ptr(out), _ptr(y_pre), y.shape[0] * y.shape[1],
                           y.shape[1], y.shape[2])
    return out, y_pre


def gate_backward(lib: ctypes.CDLL, y_pre: Tensor | None, u: Tensor, D: Tensor | None, z: Tensor | None,
                  g_out: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (g_y, g_u from the skip, g_D, g_z) of :func:`gate_forward` given the gradient at its output."""
    if D is None and z is None:
        return g_out, None, None, None
    g_y = torch.empty_like(g_out)
    g_u = None if D is None else torch.empty_like(g_out)
    g_D = None if D is None else torch.empty_like(D)
    g_z = None if z is None else torch.empty_like(z)
    lib.resel_gate_backward(_ptr(y_pre), _ptr(u), _ptr(D), _ptr(z), _ptr(g_out), _ptr(g_y), _ptr(g_u), _ptr(g_D),
                            _ptr(g_z), g_out.shape[0] * g_out.shape[1], g_out.shape[1], g_out.shape[2])
    return g_y, g_u, g_D, g_z


def gated_scan_forward(lib: ctypes.CDLL, u: Tensor, raw: Tensor, A: Tensor, B_l: Tensor, C_l: Tensor, D: Tensor | None,
                       z: Tensor | None, bias: Tensor | None, softplus: bool, reset: Tensor | None, h0: Tensor | None,
                       keep: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The scan with its prologue and epilogue: step sizes dt = softplus(raw + bias), the scan, then
    (y + D u) * silu(z). Returns (out, last state, dt, y_pre), the last two for :func:`gated_scan_backward`
    (``y_pre`` only when ``keep``)."""
    dt = dt_forward(lib, raw, bias, softplus)
    y, last = scan_forward(lib, u, dt, A, B_l, C_l, reset, h0)
    out, y_pre = gate_forward(lib, y, u, D, z, keep)
    return out, last, dt, y_pre


def gated_scan_backward(lib: ctypes.CDLL, u: Tensor, raw: Tensor, dt: Tensor, A: Tensor, B_l: Tensor, C_l: Tensor,
                        D: Tensor | None, z: Tensor | None, bias: Tensor | None, softplus: bool, y_pre: Tensor | None,
                        reset: Tensor | None, h0: Tensor | None, g_out: Tensor, g_last: Tensor | None
                        ) -> tuple[Tensor | None, ...]:
    """Gradients (du, draw, dA, dB_l, dC_l, dD, dz, dbias, dh0) of :func:`gated_scan_forward` given those of its
    output and last state."""
    g_y, du_skip, g_D, g_z = gate_backward(lib, y_pre, u, D, z, g_out)
    du, ddt, dA, dB, dC, dh0 = scan_backward(lib, u, dt, A, B_l, C_l, reset, h0, g_y, g_last)
    if du_skip is not None:
        du += du_skip
    g_raw, g_bias = dt_backward(lib, raw, bias, softplus, ddt)
    return du, g_raw, dA, dB, dC, g_D, g_z, g_bias, dh0


def conv_forward(lib: ctypes.CDLL, x: Tensor, weight: Tensor, bias: Tensor | None, reset: Tensor | None,
                 history: Tensor | None) -> tuple[Tensor, Tensor]:
    """y (batch, dim, L) and the window to carry on (batch, dim, k-1); see ``ops.conv.causal_conv1d``."""
    batch, dim, length = x.shape
    kernel = weight.shape[1]
    y = x.new_empty(batch, dim, length)
    final = x.new_empty(batch, dim, kernel - 1)
    lib.resel_conv_forward(_ptr(x), _ptr(weight), _ptr(bias), _ptr(reset), _ptr(history), _ptr(y), _ptr(final),
                           dim, length, kernel, 0, batch * dim)
    return y, final


def conv_backward(lib: ctypes.CDLL, x: Tensor, weight: Tensor, has_bias: bool, reset: Tensor | None,
                  history: Tensor | None, dy: Tensor, dfinal: Tensor | None) -> tuple[Tensor, ...]:
    """Gradients (dx, dweight, dbias, dhistory) of the forward's (y, final) given (dy, dfinal)."""
    dx = torch.empty_like(x)
    dweight = torch.zeros_like(weight)
    dbias = x.new_zeros(weight.shape[0]) if has_bias else None
    dhistory = torch.empty_like(history) if history is not None else None
    batch, dim, length = x.shape
    lib.resel_conv_backward(_ptr(x), _ptr(weight), _ptr(reset), _ptr(history), _ptr(dy), _ptr(dfinal), _ptr(dx),
                            _ptr(dweight), _ptr(dbias), _ptr(dhistory), dim, length, weight.shape[1], 0, batch * dim)
    return dx, dweight, dbias, dhistory


def gru_forward(lib: ctypes.CDLL, gi: Tensor, w_hh: Tensor, b_hh: Tensor, reset: Tensor | None,
                h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """Outputs y (batch, L, H) and the saved gates (batch, L, 4H) of the GRU over gi = W_ih x + b_ih (batch, L, 3H)."""
    batch, length, three_h = gi.shape
    hidden = three_h // 3
    w_t = w_hh.t().contiguous()
    y = gi.new_empty(batch, length, hidden)
    gates = gi.new_empty(batch, length, 4 * hidden)

    def part(_k: int, begin: int, end: int) -> None:
        lib.resel_gru_forward(_ptr(gi), _ptr(w_t), _ptr(b_hh), _ptr(reset), _ptr(h0), _ptr(y), _ptr(gates), length,
                              hidden, begin, end)

    _run_split(part, _row_ranges(batch, min_rows=1))
    return y, gates


def gru_backward(lib: ctypes.CDLL, w_hh: Tensor, reset: Tensor | None, h0: Tensor | None, y: Tensor, gates: Tensor,
                 dy: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients (dgi, dW_hh, db_hh, dh0) of the forward's y given dy."""
    batch, length, hidden = y.shape
    ranges = _row_ranges(batch, min_rows=1)
    w_t = w_hh.t().contiguous()
    dgi = y.new_empty(batch, length, 3 * hidden)
    dw_t = y.new_zeros(len(ranges), hidden, 3 * hidden)  # per thread, summed after
    db = y.new_zeros(len(ranges), 3 * hidden)
    dh0 = torch.empty_like(h0) if h0 is not None else None

    def part(k: int, begin: int, end: int) -> None:
        lib.resel_gru_backward(_ptr(w_t), _ptr(reset), _ptr(h0), _ptr(y), _ptr(gates), _ptr(dy), _ptr(dgi),
                               _ptr(dw_t[k]), _ptr(db[k]), _ptr(dh0), length, hidden, begin, end)

    _run_split(part, ranges)
    return dgi, dw_t.sum(0).t(), db.sum(0), dh0


def elu_forward(lib: ctypes.CDLL, x: Tensor) -> Tensor:
    """ELU(x) (alpha 1) of a contiguous float32 tensor."""
    y = torch.empty_like(x)
    lib.resel_elu_forward(_ptr(x), _ptr(y), x.numel())
    return y


def elu_backward(lib: ctypes.CDLL, y: Tensor, dy: Tensor) -> Tensor:
    """The gradient of ELU at the input whose output is ``y``, given ``dy`` (both contiguous float32)."""
    dx = torch.empty_like(y)
    lib.resel_elu_backward(_ptr(y), _ptr(dy), _ptr(dx), y.numel())
    return dx


def elu_members_forward(lib: ctypes.CDLL, x: Tensor, members: int) -> Tensor:
    """ELU of a contiguous (rows, members * width) float32 tensor, returned as (members, rows, width)."""
    rows, width = x.shape[0], x.shape[1] // members
    y = x.new_empty(members, rows, width)
    lib.resel_elu_members_forward(_ptr(x), _ptr(y), rows, members, width)
    return y


def elu_members_backward(lib: ctypes.CDLL, y: Tensor, dy: Tensor) -> Tensor:
    """The gradient of :func:`elu_members_forward` at its (rows, members * width) input, given ``dy`` as ``y``."""
    members, rows, width = y.shape
    dx = y.new_empty(rows, members * width)
    lib.resel_elu_members_backward(_ptr(y), _ptr(dy), _ptr(dx), rows, members, width)
    return dx


def rms_norm_forward(lib: ctypes.CDLL, x: Tensor, weight: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """RMSNorm of a contiguous (..., n) float32 tensor over its last axis, and the per-row 1 / rms it used."""
    n = x.shape[-1]
    y = torch.empty_like(x)
    rstd = x.new_empty(x.numel() // n)
    lib.resel_rms_norm_forward(_ptr(x), _ptr(weight), _ptr(eps), _ptr(y), _ptr(rstd), rstd.numel(), n)
    return y, rstd


def rms_norm_backward(lib: ctypes.CDLL, x: Tensor, weight: Tensor, rstd: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients (dx, dweight) of :func:`rms_norm_forward` given ``dy`` (contiguous, as ``x``)."""
    dx = torch.empty_like(x)
    dweight = torch.empty_like(weight)
    lib.resel_rms_norm_backward(_ptr(x), _ptr(weight), _ptr(rstd), _ptr(dy), _ptr(dx), _ptr(dweight), rstd.numel(),
                                x.shape[-1])
    return dx, dweight
