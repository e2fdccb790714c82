"""GPU training benchmark: the update per encoder (eager vs CUDA graphs), the selective scan, and training env steps/s.

Cases (paper sizes: d_model 256, d_state 64, d_conv 8, d_inner 512, 8 critic heads; Walker2d dims,
obs 17 / act 6, 1000-step trajectories):

- ``update``: one RESeL update (critic step; policy + alpha every 2nd, so the figure is the mean of
  a critic-only and a policy step) at batch 2000 and 8000 transitions, for the MLP, Mamba and GRU
  encoders, ``eager`` (``RESeL.update`` on a pinned, asynchronously copied batch) and ``graphs``
  (``GraphedUpdate``: CUDA-graph replay; not for the GRU, whose cuDNN layout needs a host sync).
  Batches are sampled before timing (the host-side sampling time is reported on its own). ``floor``
  = the update's matmul FLOPs (counted by ``torch.utils.flop_counter``) at the fp32 matmul rate
  measured here; the scan and element-wise work are not in it, so ``x floor`` is an upper bound
  of how far from compute-bound the update is.
- ``scan``: the reset-aware selective scan alone, forward and forward + backward, at (2, 16, 64)
  rows x 1000 steps, d_inner 512, d_state 64, fp32, resets at every row start: ``triton`` (ours),
  ``parallel`` (the PyTorch path) and, when installed, mamba-ssm's ``selective_scan_fn`` (which
  takes no resets: it is timed without them). ``floor`` = bytes the call must move (inputs read,
  outputs written; for the backward also the gradients) at the measured device copy bandwidth.
- ``train``: env steps/s of a real Walker2d-gravity run with the paper preset (one update per env
  step), measured after the warm-up (needs gymnasium + mujoco; skipped with the reason otherwise).

    python benchmarks/gpu.py                  # on a CUDA machine: all of it (a few minutes on an H100)
    python benchmarks/gpu.py --quick          # fewer repetitions, batch 2000 only, a shorter training run
    python benchmarks/gpu.py --smoke          # tiny sizes: checks the script itself (the test suite runs this on CPU)

Prints one table per case and writes ``benchmarks/results/gpu.json`` (``--out``). Times are
medians over repetitions, each synchronised with the device.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resel_train.algo import RESeL
from resel_train.buffer import TrajectoryBuffer
from resel_train.config import resolve_config
from resel_train.graphed_update import GraphedUpdate
from resel_train.ops.scan import selective_scan

PAPER_UPDATE_MS = {"mlp": 9.5, "mamba": 17.0, "gru": 66.0}  # RTX 4090, 1000-step trajectories
OBS_DIM, ACT_DIM, EPISODE = 17, 6, 1000  # Walker2d
F32 = 4


@dataclass
class Sizes:
    """What one run measures: the paper's sizes, or tiny ones that only check the script (``--smoke``)."""

    model_overrides: list[str]
    batches: tuple[int, ...]
    episode: int
    scan_rows: tuple[int, ...]
    scan_length: int
    d_inner: int
    d_state: int
    reps: int
    train_updates: int


def sizes_for(args: argparse.Namespace) -> Sizes:
    if args.smoke:
        return Sizes(["model.mamba.d_state=4", "model.mamba.d_conv=4", "model.embed=16", "model.hidden=16",
                      "model.mamba.dt_rank=2"],
                     (64,), 30, (2,), 64, 16, 4, 2, 20)
    return Sizes([], (2000,) if args.quick else (2000, 8000), EPISODE, (2, 16, 64), 1000, 512, 64,
                 10 if args.quick else 20, 300 if args.quick else 1500)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, reps: int, device: torch.device, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` (synchronised before and after each run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------------------------ machine rates


def matmul_rate(device: torch.device, smoke: bool) -> float:
    """Best fp32 FLOP/s of a square matmul (TF32 off, as in training)."""
    n = 512 if smoke or device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = min(median_seconds(lambda: a @ b, 3, device) for _ in range(3))
    return 2 * n**3 / best


def copy_bandwidth(device: torch.device, smoke: bool) -> float:
    """Bytes read + written per second by a device-to-device copy of a large tensor."""
    n = (1 << 20) if smoke or device.type == "cpu" else (1 << 28)
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    return 2 * n * F32 / median_seconds(lambda: dst.copy_(src), 5, device)


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            info["driver"] = "unknown (nvidia-smi not found)"
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    for module in ("triton", "mamba_ssm"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


# ------------------------------------------------------------------------------------------ update


def filled_buffer(sizes: Sizes, batch: int, seed: int = 0) -> TrajectoryBuffer:
    """Enough synthetic full-length trajectories for a few distinct batches of ``batch`` transitions."""
    rng = np.random.default_rng(seed)
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=4 * batch + 4 * sizes.episode, pad=7, seed=seed)
    for _ in range(max(4, 4 * batch // sizes.episode)):
        T = sizes.episode
        buf.add_trajectory(rng.normal(size=(T + 1, OBS_DIM)).astype(np.float32),
                           rng.uniform(-1, 1, (T, ACT_DIM)).astype(np.float32),
                           rng.normal(size=T).astype(np.float32), False)
    return buf


def update_case(encoder: str, batch: int, mode: str, sizes: Sizes, device: torch.device, mm_rate: float) -> dict:
    cfg = resolve_config("Walker2d-gravity", overrides=sizes.model_overrides + [f"model.encoder={encoder}",
                                                                               f"algo.batch_size={batch}"])
    torch.manual_seed(0)
    agent = RESeL(OBS_DIM, ACT_DIM, False, cfg.model, cfg.algo, seed=0, device=device)
    buf = filled_buffer(sizes, batch)
    t0 = time.perf_counter()
    batches = [buf.sample(batch) for _ in range(4)]
    sample_ms = (time.perf_counter() - t0) / 4 * 1e3
    graphed = GraphedUpdate(agent) if mode == "graphs" else None
    cursor = iter(range(10**9))

    def one_update():
        b = batches[next(cursor) % len(batches)]
        noise = agent.draw_noise(*b.reset.shape)
        if graphed is not None:
            return graphed(b, noise)
        if device.type == "cuda":
            b, noise = b.pin_memory(), noise.pin_memory()
        return agent.update(b.to(device, non_blocking=True), noise.to(device, non_blocking=True))

    def pair():  # a critic-only step and a critic + policy + alpha step
        one_update()
        one_update()

    flops = count_update_flops(agent, batches[0])
    seconds = median_seconds(pair, sizes.reps, device, warmup=3) / 2  # warm-up covers capture of both graphs
    floor = flops / mm_rate
    row = {"case": "update", "encoder": encoder, "batch": batch, "mode": mode, "rows_x_L": list(batches[0].reset.shape),
           "ms": seconds * 1e3, "sample_ms": sample_ms, "gflop": flops / 1e9, "floor_ms": floor * 1e3,
           "x_floor": seconds / floor, "paper_ms": PAPER_UPDATE_MS[encoder]}
    if graphed is not None:
        row["graphs_captured"] = graphed.captures
    return row


def count_update_flops(agent: RESeL, batch) -> float:
    """Matmul/conv FLOPs of one update: the mean of a critic + policy step and a critic-only step.

    Counted on two real updates of the benchmark's agent (it changes its weights; harmless here).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = agent.log_alpha.device
    counter = FlopCounterMode(display=False)
    noise = agent.draw_noise(*batch.reset.shape)
    if noise.policy is None:
        noise.policy = torch.randn_like(noise.target)
    with counter:
        agent.compute_update(batch.to(device), noise.to(device))
    critic_and_policy = counter.get_total_flops()
    noise.policy = None
    counter = FlopCounterMode(display=False)
    with counter:
        agent.compute_update(batch.to(device), noise.to(device))
    return (critic_and_policy + counter.get_total_flops()) / 2


# ------------------------------------------------------------------------------------------- scan


def scan_case(impl: str, rows: int, sizes: Sizes, device: torch.device, bandwidth: float, backward: bool) -> dict:
    L, d_inner, d_state = sizes.scan_length, sizes.d_inner, sizes.d_state
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    dt = torch.exp(torch.rand(d_inner, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    leaves = {"u": F.silu(r(rows, d_inner, L)), "delta": 0.1 * r(rows, d_inner, L),
              "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1).to(device),
              "B": r(rows, d_state, L), "C": r(rows, d_state, L), "D": torch.ones(d_inner, device=device),
              "z": r(rows, d_inner, L), "delta_bias": (dt + torch.log(-torch.expm1(-dt))).to(device)}
    for v in leaves.values():
        v.requires_grad_(backward)
    reset = torch.zeros(rows, L, dtype=torch.bool, device=device)
    reset[:, 0] = True
    grad_y = r(rows, L, d_inner).transpose(1, 2)

    if impl == "mamba-ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        def call():
            return selective_scan_fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                                     z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True)
    else:
        def call():
            return selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                                  z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True, reset=reset,
                                  impl=impl)

    def run():
        if backward:
            for v in leaves.values():
                v.grad = None
            call().backward(grad_y)
        else:
            with torch.no_grad():
                call()

    seconds = median_seconds(run, sizes.reps, device)
    io = rows * L * (4 * d_inner + 2 * d_state)  # read u, delta, z, B, C; write y
    bytes_moved = F32 * (io * (2.2 if backward else 1.0))  # backward: read grad_y + inputs, write 5 grads (~2.2x)
    floor = bytes_moved / bandwidth
    return {"case": "scan", "impl": impl, "rows": rows, "L": L, "pass": "fwd+bwd" if backward else "fwd",
            "resets": impl != "mamba-ssm", "ms": seconds * 1e3, "floor_ms": floor * 1e3, "x_floor": seconds / floor}


def scan_impls(device: torch.device) -> list[str]:
    impls = ["parallel"]
    if device.type == "cuda":
        try:
            import triton  # noqa: F401

            impls.insert(0, "triton")
        except ImportError:
            pass
        try:
            import mamba_ssm  # noqa: F401

            impls.append("mamba-ssm")
        except ImportError:
            pass
    return impls


# ------------------------------------------------------------------------------------------ training


def train_case(sizes: Sizes, device: torch.device, smoke: bool) -> dict:
    """Env steps/s of Walker2d-gravity (paper preset) after the warm-up, one update per env step."""
    import tempfile

    try:
        import mujoco  # noqa: F401
    except ImportError as exc:
        return {"case": "train", "skipped": f"mujoco not importable ({exc}): pip install 'gymnasium[mujoco]'"}
    from resel_train.trainer import Trainer

    warmup = 200 if smoke else 2000
    overrides = sizes.model_overrides + [f"warmup_steps={warmup}", "eval_every=1000000000",
                                         "checkpoint_every=1000000000", "log_every=1000000000", "eval_episodes=1"]
    if smoke:
        overrides.append("algo.batch_size=64")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config("Walker2d-gravity", overrides=overrides, steps=warmup, out=tmp, device=str(device))
        trainer = Trainer(cfg)
        trainer.train(show_progress=False)  # warm-up: random actions, no updates
        sync(device)
        t0 = time.perf_counter()
        trainer.train(until_step=warmup + sizes.train_updates, show_progress=False)
        sync(device)
        seconds = time.perf_counter() - t0
    return {"case": "train", "env": "Walker2d-gravity", "preset": cfg.preset, "batch": cfg.algo.batch_size,
            "encoder": cfg.model.encoder, "updates": sizes.train_updates, "env_steps_per_s": sizes.train_updates / seconds,
            "cuda_graphs": trainer.learner.uses_cuda_graphs,
            "note": "includes one final evaluation episode and one checkpoint save"}


# ------------------------------------------------------------------------------------------ output


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "-" if v is None else str(v)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, batch 2000 only, shorter training")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing useful")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["update", "scan", "train"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = sizes_for(args)
    result: dict = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                    "machine": machine_info(device), "rows": []}
    mm_rate, bandwidth = matmul_rate(device, args.smoke), copy_bandwidth(device, args.smoke)
    result["rates"] = {"matmul_fp32_tflops": mm_rate / 1e12, "copy_gbytes_per_s": bandwidth / 1e9}
    print(json.dumps(result["machine"]), json.dumps(result["rates"]))

    def save() -> None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")

    if "update" not in args.skip:
        modes = ["eager", "graphs"] if device.type == "cuda" else ["eager"]
        for encoder in ("mlp", "mamba", "gru"):
            for batch in sizes.batches:
                for mode in modes:
                    if mode == "graphs" and encoder in ("gru", "lstm"):
                        continue
                    result["rows"].append(update_case(encoder, batch, mode, sizes, device, mm_rate))
                    save()
        print_table("update (ms per update; policy + alpha every 2nd)",
                    [r for r in result["rows"] if r["case"] == "update"],
                    ["encoder", "batch", "mode", "rows_x_L", "ms", "paper_ms", "sample_ms", "gflop", "floor_ms",
                     "x_floor"])
    if "scan" not in args.skip:
        for impl in scan_impls(device):
            for rows in sizes.scan_rows:
                if impl == "parallel" and device.type == "cpu" and rows > 2 and not args.smoke:
                    continue  # seconds per call on a CPU
                for backward in (False, True):
                    result["rows"].append(scan_case(impl, rows, sizes, device, bandwidth, backward))
                    save()
        print_table(f"selective scan (d_inner {sizes.d_inner}, d_state {sizes.d_state}, fp32)",
                    [r for r in result["rows"] if r["case"] == "scan"],
                    ["impl", "rows", "L", "pass", "resets", "ms", "floor_ms", "x_floor"])
    if "train" not in args.skip:
        result["rows"].append(train_case(sizes, device, args.smoke))
        save()
        print_table("training (after warm-up)", [r for r in result["rows"] if r["case"] == "train"],
                    ["env", "preset", "encoder", "batch", "updates", "env_steps_per_s", "cuda_graphs", "skipped"])
    save()
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
