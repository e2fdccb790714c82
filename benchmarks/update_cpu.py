"""CPU cost of one RESeL update per encoder, side by side with one SB3 SAC gradient step, one torch thread.

Per case: process-CPU milliseconds per ``Learner.update_once()`` (sample + update; CPU time rather
than wall time, so a shared machine's descheduling does not count), aten calls per update
(``torch.profiler``, averaged over four updates: two with a policy step, two without), and
optionally env steps/s of a short real training run. The peer is SB3's SAC (MlpPolicy 256x256,
batch 256) on Pendulum-v1: ms per ``model.train(gradient_steps=1)`` and env steps/s of
``model.learn``. Cases run interleaved, round-robin, ``--rounds`` times, and the medians are
reported, so load changes hit every case alike. SB3 is optional (``pip install
stable-baselines3``); without it the SB3 rows are skipped.

    python benchmarks/update_cpu.py                                   # CPU preset, every encoder + SB3
    python benchmarks/update_cpu.py --presets cpu classic --throughput-steps 0
    PYTHONPATH=/path/to/old python benchmarks/update_cpu.py --no-sb3 --out old.json   # A/B another checkout

"x floor" prices the update's matrix-product FLOPs (``torch.utils.flop_counter``, forward and
backward) at this machine's one-thread rate for a 1024^3 float32 matmul: a lower bound, since the
element-wise work (the scan, norms, activations, the optimiser) is not in it.

Prints a table, writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from resel_train.nets.registry import ENCODER_NAMES


def _aten_calls(fn, reps: int) -> float:
    """aten calls per call of ``fn``, averaged over ``reps`` calls: a multiple of the policy delay (2), since
    an update that also steps the policy makes ~1.6x the calls of a critic-only one."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) / reps


def _matmul_flops(fn) -> int:
    """FLOPs of the matrix products (mm, bmm, addmm, conv, ...) one call of ``fn`` runs, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _gemm_rate() -> float:
    """FLOP/s of a large float32 matrix product on one thread: the rate a matmul-bound floor is priced at."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / best


def _cpu_ms(fn, reps: int) -> float:
    start = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - start) / reps * 1e3


def _warm_trainer(preset: str, encoder: str, tmp: str):
    """A Pendulum-V trainer that has run its warm-up (random steps; no update yet), no evaluation or checkpoints."""
    from resel_train.config import resolve_config
    from resel_train.trainer import Trainer

    cfg = resolve_config("Pendulum-V", preset, overrides=["eval_every=1000000000", "checkpoint_every=1000000000",
                                                          "threads=1"], out=tmp, **{"model.encoder": encoder})
    cfg.steps = cfg.warmup_steps
    trainer = Trainer(cfg)
    trainer.train(show_progress=False)
    return trainer


def _warm_sb3():
    """SB3 SAC (MlpPolicy 256x256, batch 256) on Pendulum-v1 after its 1000 warm-up steps."""
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", "Pendulum-v1", batch_size=256, learning_starts=1000, seed=0, device="cpu")
    model.learn(1000)
    return model


class OurUpdate:
    """A trainer past its warm-up on Pendulum-V; ``step`` is one update (sample + update)."""

    def __init__(self, preset: str, encoder: str, tmp: str) -> None:
        self.trainer = _warm_trainer(preset, encoder, tmp)
        for _ in range(3):
            self.step()

    def step(self) -> None:
        metrics = self.trainer.learner.update_once()
        float(next(iter(metrics.values())))  # the update has finished


class SB3Update:
    """SB3 SAC on Pendulum-v1 past its warm-up; ``step`` is one gradient step (batch 256)."""

    def __init__(self) -> None:
        self.model = _warm_sb3()
        for _ in range(3):
            self.step()

    def step(self) -> None:
        self.model.train(gradient_steps=1, batch_size=256)


def our_env_steps_per_s(preset: str, encoder: str, steps: int, tmp: str) -> float:
    """Env steps/s of ``resel train --env Pendulum-V --preset <preset>`` over ``steps`` steps after warm-up.

    Without callbacks (no evaluation episodes, no periodic checkpoints), as SB3's ``learn`` below runs
    without an evaluation callback; the run's closing checkpoint is still written and timed.
    """
    trainer = _warm_trainer(preset, encoder, tmp)
    trainer.cfg.steps = trainer.env_steps + steps
    start = time.perf_counter()
    trainer.train(show_progress=False, callbacks=[])
    return steps / (time.perf_counter() - start)


def sb3_env_steps_per_s(steps: int) -> float:
    """Env steps/s of SB3 SAC's ``learn`` on Pendulum-v1 (one gradient step per env step) after warm-up."""
    model = _warm_sb3()
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20, help="timed updates per case and round (paper size: / 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODER_NAMES), choices=ENCODER_NAMES)
    parser.add_argument("--presets", nargs="+", default=["cpu"], choices=["cpu", "classic"])
    parser.add_argument("--throughput-steps", type=int, default=1000,
                        help="env steps after warm-up for the env steps/s column (0: skip it)")
    parser.add_argument("--no-sb3", action="store_true", help="skip the SB3 SAC rows")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "update_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    sb3 = not args.no_sb3 and importlib.util.find_spec("stable_baselines3") is not None
    tmp = tempfile.mkdtemp(prefix="resel-bench-")
    cases: dict[str, tuple[object, int]] = {}
    for preset in args.presets:
        for encoder in args.encoders:
            reps = args.updates if preset == "cpu" else max(2, args.updates // 10)
            cases[f"{preset}/{encoder}"] = (OurUpdate(preset, encoder, os.path.join(tmp, f"{preset}-{encoder}")), reps)
    if sb3:
        cases["sb3/sac"] = (SB3Update(), args.updates)
    times: dict[str, list[float]] = {name: [] for name in cases}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, (case, reps) in cases.items():
            times[name].append(_cpu_ms(case.step, reps))
    rate = _gemm_rate()
    rows = []
    for name, (case, _reps) in cases.items():
        flops = _matmul_flops(case.step)
        rows.append({"case": name, "cpu_ms_per_update": statistics.median(times[name]),
                     "cpu_ms_all_rounds": times[name], "aten_calls_per_update": _aten_calls(case.step, 4),
                     "matmul_gflop_per_update": flops / 1e9, "matmul_floor_ms": flops / rate * 1e3})
    if args.throughput_steps:
        for row in rows:
            preset, encoder = row["case"].split("/")
            if preset == "cpu":
                row["env_steps_per_s"] = our_env_steps_per_s(preset, encoder, args.throughput_steps,
                                                             os.path.join(tmp, f"tp-{encoder}"))
            elif preset == "sb3":
                row["env_steps_per_s"] = sb3_env_steps_per_s(args.throughput_steps)
    sb3_ms = next((r["cpu_ms_per_update"] for r in rows if r["case"] == "sb3/sac"), None)
    print(f"matmul rate (1 thread, 1024^3 float32): {rate / 1e9:.0f} GFLOP/s")
    print(f"{'case':14s} {'cpu ms/update':>13s} {'x SB3':>6s} {'aten calls':>10s} {'env steps/s':>11s} "
          f"{'matmul GFLOP':>12s} {'x floor':>7s}")
    for r in rows:
        ratio = f"{r['cpu_ms_per_update'] / sb3_ms:6.2f}" if sb3_ms else "     -"
        steps_s = f"{r['env_steps_per_s']:11.1f}" if "env_steps_per_s" in r else "          -"
        print(f"{r['case']:14s} {r['cpu_ms_per_update']:13.1f} {ratio} {r['aten_calls_per_update']:10.0f} {steps_s} "
              f"{r['matmul_gflop_per_update']:12.3f} {r['cpu_ms_per_update'] / r['matmul_floor_ms']:7.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "torch": torch.__version__, "threads": 1, "matmul_gflops_per_s": rate / 1e9,
        "rounds": args.rounds, "updates_per_round": args.updates,
        "loadavg_1min": [load_before, os.getloadavg()[0]], "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
