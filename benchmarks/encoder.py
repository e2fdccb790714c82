"""Context-encoder benchmark: forward+backward time of the selective scan and of whole encoders on the CPU.

For "2000 transitions at L" (batch = ceil(2000 / L) rows of length L; at L=4096 one row of 4096) it
times, forward + backward, with a reset at the start of every row and at a few random positions:

- ``scan/cpu``       the reset-aware selective scan alone, compiled CPU kernel (``impl="cpu"``), called
  exactly as ``Mamba.forward`` calls it (D, z gate, dt bias + softplus, resets, last state);
- ``scan/parallel``  the same call on the pure-PyTorch chunked path (``impl="parallel"``);
- ``scan/loop``      the same call on the autograd reference loop (``impl="loop"``);
- ``mamba/cpu``, ``mamba/parallel`` and ``mamba/loop``: the paper-size encoder ``make_encoder("mamba", 384,
  128, 256)`` (d_state 64, d_conv 8, expand 2 -> d_inner 512, dt_rank 16) on each scan;
- ``gru`` and ``mlp``: ``make_encoder("gru" / "mlp", 384)`` (the GRU on a CPU: the compiled reset-aware
  loop when a C compiler is present, else one ``nn.GRU`` call over the batch laid out one trajectory
  segment per row);
- ``lstm``: ``make_encoder("lstm", 384)`` (one ``nn.LSTM`` call over the same layout, segments packed by
  length);
- ``s5/parallel`` and ``s5/loop``: ``make_encoder("s5", 384)``, one resettable S5 layer with 64 complex
  modes, on the log-depth scan or on its per-step reference loop.

Each time is compared with a floor for this machine, from rates measured here (matmul FLOP/s,
element-wise elements/s for exp / mul / addcmul on in-cache tensors, copy bandwidth); the op counts
are spelled out above :func:`scan_work`. Columns: median / min-max wall time of the repetitions,
``noise %`` = (max - min) / median, ``cpu ms`` = median process CPU time (with 1 thread: the cost
without time spent descheduled), ``us/trans`` = median / (batch * L), ``x floor`` = median / floor,
``x floor (min)`` = fastest repetition / floor, ``load`` = 1-minute load average before / after the
case (2 cores: above ~2 other processes were competing for them).

    python benchmarks/encoder.py                 # 2 threads, all L (a few minutes on a quiet machine)
    python benchmarks/encoder.py --threads 2 1   # also 1 thread
    python benchmarks/encoder.py --quick         # L in {64, 1024}, fewer repetitions (~1 min)
    python benchmarks/encoder.py --profile       # + torch.profiler top ops of the Mamba encoder at L=1024
    python benchmarks/encoder.py --lengths 1000 --traj-len 125   # rows packed with ~125-step trajectories

Writes ``benchmarks/results/encoder.json`` after every case (``--out`` to change; ``--no-save`` to
skip; ``--merge`` keeps the file's rows for (threads, L, case) not re-measured). On a shared machine
read the 1-thread rows: with 2 threads each op waits for both threads, and a descheduled one costs
a whole scheduler slice (~12 ms).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from resel_train.nets.encoders import make_encoder
from resel_train.ops.scan import selective_scan

TRANSITIONS = 2000
LENGTHS = (64, 256, 1024, 4096)
IN_DIM, OUT_DIM, HIDDEN = 384, 128, 256
D_STATE, D_CONV, EXPAND, DT_RANK = 64, 8, 2, 16
D_INNER = EXPAND * HIDDEN
S5_STATE = 64  # make_encoder("s5")'s default complex modes
RESET_PROB = 1 / 500  # extra resets inside rows (on top of one at every row start)

# Paper (RESeL, RTX 4090): one update on full 1000-step trajectories.
PAPER_MS = {"mlp": 9.5, "mamba": 17.0, "gru": 66.0}
F32 = 4  # bytes


# --------------------------------------------------------------------------------------------- timing


def time_fn(fn, reps: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds of ``fn()`` for ``reps`` runs after ``warmup`` untimed runs.

    With 1 thread the CPU time is what the run costs without the time it spent descheduled, a steadier
    figure than the wall time on a shared machine; with 2 threads it also counts OpenMP spin-waiting.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _best_rate(fn, work: float, reps: int) -> float:
    """Work per second of the fastest of ``reps`` runs (a floor wants the best rate; on a shared
    machine the fastest run is also the one least disturbed by other processes)."""
    return work / min(time_fn(fn, reps, warmup=2)[0])


# ------------------------------------------------------------------------------------ machine rates


def measure_rates(quick: bool) -> dict:
    """Best rates this machine reaches at the current thread count (fastest repetition: a floor uses the
    best rate, and the fastest run is the one least disturbed by other processes).

    - matmul: FLOP/s of ``torch.mm`` at the encoder's own Linear shapes (2048 tokens), best of them;
    - element-wise: elements/s of one ``exp`` / ``mul`` / ``addcmul_`` pass on float32 tensors of
      64k, 256k and 1M elements (the sizes of the scan's per-step / per-chunk slices), best size;
      operands are kept away from denormals (they would slow every op down 10-50x);
    - bandwidth: bytes/s of a 256 MiB copy (read + write counted).
    """
    reps = 5 if quick else 15
    mm = 0.0
    for m, k, n in ((2048, 256, 1024), (2048, 384, 256), (2048, 512, 144), (2048, 512, 256)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        mm = max(mm, _best_rate(lambda a=a, b=b: torch.mm(a, b), 2.0 * m * k * n, reps))
    ew = {"exp": 0.0, "mul": 0.0, "fma": 0.0}
    for numel in (1 << 16, 1 << 18, 1 << 20):
        a = torch.rand(numel) + 0.5
        b = torch.rand(numel) + 0.5
        c = torch.full((numel,), 1e-3)
        out = torch.empty(numel)
        n_reps = max(reps, int(1e7 / numel))
        ops = {
            "exp": lambda a=a, b=b, out=out: torch.exp(b, out=out),
            "mul": lambda a=a, b=b, out=out: torch.mul(a, b, out=out),
            # a += b * c with |b * c| ~ 1e-3: stays normal, does not overflow over the repetitions
            "fma": lambda a=a, b=b, c=c: a.addcmul_(b, c),
        }
        for name, fn in ops.items():
            ew[name] = max(ew[name], _best_rate(fn, numel, n_reps))
    src = torch.rand(1 << 26)
    dst = torch.empty_like(src)
    bw = _best_rate(lambda: dst.copy_(src), 2.0 * src.numel() * F32, 3 if quick else 5)
    return {"matmul_flops": mm, "exp_per_s": ew["exp"], "mul_per_s": ew["mul"], "fma_per_s": ew["fma"],
            "bandwidth_bytes": bw}


# ------------------------------------------------------------------------------------------ floors
#
# Work model. "element" = one (batch, d_inner, L, d_state) entry of the scan; N = batch*d_inner*L*d_state.
# Only the minimum work of a fused scan is counted (no temporaries, no re-reads), each op priced at the
# rate one PyTorch pass of that op reaches here on in-cache tensors:
#
#   forward, per element:   exp(dt*A)                      1 exp
#                           dt*A                           1 mul
#                           (dt*u)*B  (dt*u is per (b,d,t)) 1 mul
#                           h = decay*h + drive             1 fma
#                           y += C*h                        1 fma      -> 1 exp + 2 mul + 2 fma
#   backward, per element (states recomputed from chunk boundaries, as the O(chunk) memory design needs):
#       recompute           exp, dt*A, (dt*u)*B, state fma  1 exp + 2 mul + 1 fma
#       g_C  += h*g_y                                       1 fma
#       g_h   = g_y*C + decay_{t+1}*g_h_{t+1}              1 mul + 1 fma
#       g_ld  = g_h*h_{t-1}*decay  (grad of log-decay)      2 mul
#       g_dt += g_ld*A ; g_A += g_ld*dt                     2 fma
#       g_dtu += g_h*B ; g_B += g_h*dtu                     2 fma      -> 1 exp + 5 mul + 7 fma
#   backward / forward = 13 / 5 ~ 2.6x; total 2 exp + 7 mul + 9 fma = 18 ops per element.
#   Per-(b,d,t) work (softplus, D*u, the z gate, dt*u) is O(1/d_state) of this and not counted.
#
# Bytes the scan must move (float32): forward reads u, delta, z (b,d,L) and B, C (b,n,L), writes y
# (b,d,L); backward reads grad_y + the same inputs and writes their gradients. Parameters are tiny.
# Floor = max(compute time, bytes / copy bandwidth); compute dominates here by ~30x.
#
# Encoder floor = matmul FLOPs of every Linear at the matmul rate (2*in*out per token forward, x3 for
# forward + backward: grad input and grad weight), + the scan floor above, + the depthwise causal conv
# (d_conv fma per (b,d,t) forward, 2x that backward: grad input and grad weight), + bytes (input,
# output and their gradients, weights read twice and their gradients written). Other point-wise work
# (norms, ELU/SiLU/GELU, softplus, gate) is O(hidden) per token, ~1/50 of the scan, and not counted.


def scan_work(batch: int, length: int, d_inner: int = D_INNER, d_state: int = D_STATE) -> dict:
    n = batch * d_inner * length * d_state
    seq_inner, seq_state = batch * d_inner * length, batch * d_state * length
    return {
        "exp": 2 * n, "mul": 7 * n, "fma": 9 * n,
        "bytes": F32 * (3 * seq_inner + 2 * seq_state + seq_inner  # forward: u, delta, z, B, C -> y
                        + seq_inner + 3 * seq_inner + 2 * seq_state  # backward reads grad_y + inputs
                        + 3 * seq_inner + 2 * seq_state),  # and writes their gradients
    }


def linear_shapes(kind: str) -> list[tuple[int, int]]:
    """(in, out) of every Linear the encoder applies to each token."""
    shapes = [(IN_DIM, HIDDEN), (HIDDEN, OUT_DIM)]
    if kind == "mamba":
        shapes += [(HIDDEN, 2 * D_INNER), (D_INNER, DT_RANK + 2 * D_STATE), (DT_RANK, D_INNER),
                   (D_INNER, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, HIDDEN)]
    elif kind == "gru":
        shapes += [(HIDDEN, 3 * HIDDEN), (HIDDEN, 3 * HIDDEN)]  # input and recurrent gate products
    elif kind == "lstm":
        shapes += [(HIDDEN, 4 * HIDDEN), (HIDDEN, 4 * HIDDEN)]
    elif kind == "s5":  # Bbar u (real and imaginary part), the 2 Re(C h) readout, the GLU gate
        shapes += [(HIDDEN, 2 * S5_STATE), (2 * S5_STATE, HIDDEN), (HIDDEN, HIDDEN)]
    elif kind == "mlp":
        shapes += [(HIDDEN, HIDDEN)]
    return shapes


def encoder_work(kind: str, batch: int, length: int, n_params: int) -> dict:
    tokens = batch * length
    work = {"exp": 0, "mul": 0, "fma": 0}
    if kind == "mamba":
        work = scan_work(batch, length)
        work["fma"] += 3 * D_CONV * tokens * D_INNER  # conv: forward, grad input, grad weight
    if kind == "s5":  # log-depth scan: per level one complex multiply-add (4 real FMAs) forward, two backward
        work["fma"] += 3 * 4 * max(1, math.ceil(math.log2(length))) * tokens * S5_STATE
    work["flops"] = 3 * sum(2 * i * o for i, o in linear_shapes(kind)) * tokens
    work["bytes"] = work.get("bytes", 0) + F32 * (2 * tokens * (IN_DIM + OUT_DIM) + 3 * n_params)
    return work


def floor_seconds(work: dict, rates: dict) -> float:
    compute = (work.get("flops", 0) / rates["matmul_flops"] + work["exp"] / rates["exp_per_s"]
               + work["mul"] / rates["mul_per_s"] + work["fma"] / rates["fma_per_s"])
    return max(compute, work["bytes"] / rates["bandwidth_bytes"])


# ------------------------------------------------------------------------------------------ inputs


def make_resets(batch: int, length: int, seed: int = 0, traj_len: int | None = None) -> torch.Tensor:
    """A packed batch: a reset at every row start and at random positions (p = RESET_PROB), or with
    ``traj_len`` trajectories of uniformly random length in [traj_len / 2, 3 traj_len / 2] (the last
    one of a row cut at the row end), as the replay buffer packs short episodes."""
    g = torch.Generator().manual_seed(seed)
    if traj_len is None:
        reset = torch.rand(batch, length, generator=g) < RESET_PROB
    else:
        reset = torch.zeros(batch, length, dtype=torch.bool)
        lengths = torch.randint(traj_len // 2, traj_len + traj_len // 2 + 1, (batch, length), generator=g)
        for row in range(batch):
            starts = torch.cumsum(lengths[row], 0) - lengths[row, 0]
            reset[row, starts[starts < length]] = True
    reset[:, 0] = True
    return reset


def scan_inputs(batch: int, length: int, seed: int = 0) -> dict:
    """Leaves shaped and scaled like the Mamba block's scan call (dt ~ softplus(bias + small))."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    dt = torch.exp(torch.rand(D_INNER, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "u": F.silu(r(batch, D_INNER, length)), "delta": 0.1 * r(batch, D_INNER, length),
        "A_log": torch.log(torch.arange(1, D_STATE + 1, dtype=torch.float32)).repeat(D_INNER, 1),
        "B": r(batch, D_STATE, length), "C": r(batch, D_STATE, length), "D": torch.ones(D_INNER),
        "z": r(batch, D_INNER, length), "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


# ------------------------------------------------------------------------------------------ cases


def scan_case(impl: str, batch: int, length: int, traj_len: int | None = None):
    leaves = {k: v.requires_grad_() for k, v in scan_inputs(batch, length).items()}
    reset = make_resets(batch, length, traj_len=traj_len)
    # Upstream gradient laid out as in the encoder, where y reaches out_proj through y.transpose(1, 2):
    # (batch, d_inner, L) with d_inner fastest in memory. (y.sum() would hand the scan a stride-0
    # gradient, which hides layout costs the real backward pays.)
    grad_y = torch.randn(batch, length, D_INNER, generator=torch.Generator().manual_seed(1)).transpose(1, 2)

    def step():
        for v in leaves.values():
            v.grad = None
        y, _ = selective_scan(
            leaves["u"], leaves["delta"], -torch.exp(leaves["A_log"]), leaves["B"], leaves["C"], leaves["D"],
            z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True, reset=reset,
            return_last_state=True, impl=impl,
        )
        y.backward(grad_y)

    return step, scan_work(batch, length)


def encoder_case(kind: str, impl: str | None, batch: int, length: int, traj_len: int | None = None):
    kwargs = {"scan_impl": impl} if kind in ("mamba", "s5") else {}
    torch.manual_seed(0)
    enc = make_encoder(kind, IN_DIM, OUT_DIM, HIDDEN, **kwargs)
    x = torch.randn(batch, length, IN_DIM, requires_grad=True)  # the pre-encoders need grad_x
    reset = make_resets(batch, length, traj_len=traj_len)

    def step():
        enc.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = enc(x, reset)
        y.sum().backward()

    n_params = sum(p.numel() for p in enc.parameters())
    return step, encoder_work(kind, batch, length, n_params)


def repetitions(name: str, length: int, quick: bool) -> tuple[int, int]:
    """(timed repetitions, untimed warm-up runs)."""
    if name.endswith("/loop"):  # the autograd reference loop: seconds per run, ~1.5 GB of saved tensors
        return (1, 0) if (quick or length >= 1024) else (2, 0)
    if name in ("gru", "lstm") and length >= 1024:
        return (2, 1) if quick else (3, 1)
    return (3, 1) if quick else (7, 1)


CASES = ("scan/cpu", "scan/parallel", "scan/loop", "mamba/cpu", "mamba/parallel", "mamba/loop", "gru", "lstm",
         "s5/parallel", "s5/loop", "mlp")


def build(name: str, batch: int, length: int, traj_len: int | None = None):
    if name.startswith("scan/"):
        return scan_case(name.split("/")[1], batch, length, traj_len)
    kind, _, impl = name.partition("/")
    return encoder_case(kind, impl or None, batch, length, traj_len)


def run_all(lengths, cases, threads: int, quick: bool, rates: dict, log, on_row=None,
            traj_len: int | None = None) -> list[dict]:
    """Per L: the autograd loops one after the other (seconds each), then the other cases round-robin,
    one repetition of each in turn, so that load changes on a shared machine hit them all alike."""
    rows = []
    for length in lengths:
        batch = math.ceil(TRANSITIONS / length)
        slow = [c for c in cases if c.endswith("/loop")]
        groups = [[c] for c in slow] + [[c for c in cases if c not in slow]]
        for group in groups:
            if not group:
                continue
            built = {name: build(name, batch, length, traj_len) for name in group}
            plan = {name: repetitions(name, length, quick) for name in group}
            times = {name: [] for name in group}
            cpu = {name: [] for name in group}
            load_before = os.getloadavg()[0]
            for name in group:
                time_fn(built[name][0], 0, warmup=plan[name][1])
            for rep in range(max(reps for reps, _ in plan.values())):
                for name in group:
                    if rep < plan[name][0]:
                        wall, proc = time_fn(built[name][0], 1, warmup=0)
                        times[name] += wall
                        cpu[name] += proc
            load_after = os.getloadavg()[0]
            for name in group:
                t, work = times[name], built[name][1]
                med = statistics.median(t)
                floor = floor_seconds(work, rates)
                rows.append({
                    "case": name, "threads": threads, "L": length, "batch": batch, "traj_len": traj_len,
                    "transitions": batch * length, "reps": len(t), "times_s": t, "median_s": med,
                    "min_s": min(t), "max_s": max(t), "cpu_s": cpu[name],
                    "cpu_median_s": statistics.median(cpu[name]),
                    "us_per_transition": 1e6 * med / (batch * length), "floor_s": floor, "x_floor": med / floor,
                    "x_floor_best": min(t) / floor, "loadavg_1min": [load_before, load_after],
                })
                log(f"  threads={threads} L={length:5d} {name:15s} {1e3 * med:9.1f} ms  ({len(t)} reps, "
                    f"min {1e3 * min(t):.1f}, max {1e3 * max(t):.1f}, cpu {1e3 * statistics.median(cpu[name]):.0f})"
                    f"  x floor {med / floor:.2f}")
                if on_row is not None:
                    on_row(rows[-1])
            del built
    return rows


# ------------------------------------------------------------------------------------------ output


def machine_info() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        for key in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
                    "L2 cache", "L3 cache"):
            if key in fields:
                info[key] = fields[key].strip()
    except (OSError, subprocess.CalledProcessError):
        info["Model name"] = platform.processor()
    info["os.cpu_count"] = os.cpu_count()
    return info


def print_tables(rows: list[dict], rates_by_threads: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        Console = None
    rows = sorted(rows, key=lambda r: (r["threads"], r["L"], r.get("traj_len") or 0, CASES.index(r["case"])))
    headers = ["thr", "L", "batch", "traj", "case", "reps", "median ms", "min-max ms", "noise %", "cpu ms", "us/trans",
               "floor ms", "x floor", "x floor (min)", "load"]
    body = []
    for r in rows:
        noise = 100 * (r["max_s"] - r["min_s"]) / r["median_s"]
        body.append([str(r["threads"]), str(r["L"]), str(r["batch"]), str(r.get("traj_len") or "-"), r["case"],
                     str(r["reps"]),
                     f"{1e3 * r['median_s']:.1f}", f"{1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}",
                     f"{noise:.0f}", f"{1e3 * r['cpu_median_s']:.0f}", f"{r['us_per_transition']:.1f}",
                     f"{1e3 * r['floor_s']:.1f}",
                     f"{r['x_floor']:.2f}", f"{r['x_floor_best']:.2f}",
                     "{:.1f}-{:.1f}".format(*r["loadavg_1min"])])
    rate_lines = [
        f"threads={t}: matmul {v['matmul_flops'] / 1e9:.0f} GFLOP/s, exp {v['exp_per_s'] / 1e9:.1f} / "
        f"mul {v['mul_per_s'] / 1e9:.1f} / addcmul {v['fma_per_s'] / 1e9:.1f} G elem/s, "
        f"copy {v['bandwidth_bytes'] / 1e9:.1f} GB/s"
        for t, v in rates_by_threads.items()
    ]
    ratio_rows = ratio_table(rows)
    if Console is None:
        print("\n".join(rate_lines))
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
        for line in [headers] + body:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
        for line in ratio_rows:
            print("  ".join(line))
        return
    console = Console(width=160)
    for line in rate_lines:
        console.print(line)
    table = Table(title=f"forward + backward, {TRANSITIONS} transitions (batch = ceil({TRANSITIONS}/L))")
    for h in headers:
        table.add_column(h, justify="left" if h == "case" else "right")
    for b in body:
        table.add_row(*b)
    console.print(table)
    rt = Table(title="Mamba / GRU and Mamba / MLP median-time ratios (paper, RTX 4090, 1000 steps: 0.26, 1.8)")
    for h in ("threads", "L", "mamba ms", "gru ms", "mlp ms", "mamba/gru", "mamba/mlp"):
        rt.add_column(h, justify="right")
    for line in ratio_rows:
        rt.add_row(*line)
    console.print(rt)


def ratios(rows: list[dict]) -> list[dict]:
    by_key = {(r["threads"], r["L"], r.get("traj_len"), r["case"]): r["median_s"] for r in rows}
    out = []
    for t, length, traj in sorted({(r["threads"], r["L"], r.get("traj_len")) for r in rows},
                                  key=lambda k: (k[0], k[1], k[2] or 0)):
        m, g, p = (by_key.get((t, length, traj, c)) for c in ("mamba/parallel", "gru", "mlp"))
        if m is None:
            continue
        out.append({"threads": t, "L": length, "traj_len": traj, "mamba_s": m, "gru_s": g, "mlp_s": p,
                    "mamba_over_gru": m / g if g else None, "mamba_over_mlp": m / p if p else None})
    return out


def ratio_table(rows: list[dict]) -> list[list[str]]:
    fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    return [[str(r["threads"]), str(r["L"]), fmt(r["mamba_s"] and 1e3 * r["mamba_s"], "{:.1f}"),
             fmt(r["gru_s"] and 1e3 * r["gru_s"], "{:.1f}"), fmt(r["mlp_s"] and 1e3 * r["mlp_s"], "{:.1f}"),
             fmt(r["mamba_over_gru"], "{:.2f}"), fmt(r["mamba_over_mlp"], "{:.1f}")] for r in ratios(rows)]


def profile_mamba(length: int = 1024, top: int = 20) -> str:
    """torch.profiler of one forward + backward of the Mamba encoder (parallel scan): top ops by self CPU."""
    from torch.profiler import ProfilerActivity, profile

    step, _ = encoder_case("mamba", "parallel", math.ceil(TRANSITIONS / length), length)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="L in {64, 1024}, fewer repetitions")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch thread counts (default 2)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--cases", nargs="+", default=None, choices=CASES)
    parser.add_argument("--traj-len", type=int, default=None,
                        help="pack trajectories of ~N steps (uniform N/2..3N/2) instead of resets with p=1/500")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops (Mamba, L=1024)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "encoder.json"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of --out for (threads, L, case) not measured in this run")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    lengths = args.lengths or ((64, 1024) if args.quick else LENGTHS)
    cases = args.cases or CASES
    out = Path(args.out)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])

    rows, rates_by_threads, commands = [], {}, [command]
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        measured = {(t, n, c, args.traj_len) for t in args.threads for n in lengths for c in cases}
        rows = [r for r in old["rows"] if (r["threads"], r["L"], r["case"], r.get("traj_len")) not in measured]
        rates_by_threads = {int(k): v for k, v in old["rates"].items() if int(k) not in args.threads}
        commands = old.get("commands", [old.get("command")]) + commands

    def save(_row=None) -> None:  # after every case, so an interrupted run keeps what it measured
        if args.no_save:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "commands": commands, "machine": machine_info(), "transitions": TRANSITIONS,
            "reset_prob": RESET_PROB, "rates": {str(k): v for k, v in sorted(rates_by_threads.items())},
            "paper_ms_rtx4090": PAPER_MS, "paper_ratios": {"mamba_over_gru": 17 / 66, "mamba_over_mlp": 17 / 9.5},
            "rows": rows, "ratios": ratios(rows),
        }
        out.write_text(json.dumps(result, indent=1) + "\n")

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    for threads in args.threads:
        torch.set_num_threads(threads)
        log(f"threads={threads}: measuring rates ...")
        rates_by_threads[threads] = measure_rates(args.quick)
        run_all(lengths, cases, threads, args.quick, rates_by_threads[threads], log,
                on_row=lambda row: (rows.append(row), save()), traj_len=args.traj_len)
    profile_text = None
    if args.profile:
        torch.set_num_threads(args.threads[0])
        profile_text = profile_mamba()
    print_tables(rows, rates_by_threads)
    if profile_text:
        print(f"\ntorch.profiler, Mamba encoder fwd+bwd, L=1024, threads={args.threads[0]}:\n{profile_text}")
    log(f"total {time.perf_counter() - t_start:.0f} s")
    if not args.no_save:
        save()
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
