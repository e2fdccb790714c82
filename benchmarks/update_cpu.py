"""Process-CPU milliseconds per ``Trainer.update_once`` (sample + update) on the CPU, one torch thread.

CPU time rather than wall time, so that a shared machine's descheduling does not count; for an
A/B comparison run it once per checkout, alternating (PYTHONPATH selects the code):

    PYTHONPATH=/path/to/old python benchmarks/update_cpu.py --out old.json
    PYTHONPATH=.            python benchmarks/update_cpu.py --out new.json

Cases: Pendulum-V, the CPU preset (batch 256) and the paper-size model (``classic`` preset, batch
2000), for every encoder kind (or those of ``--encoders``), after the warm-up. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from resel_train.nets.encoders import ENCODER_KINDS


def measure(preset: str, encoder: str, updates: int) -> float:
    from resel_train.config import resolve_config
    from resel_train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config("Pendulum-V", preset, overrides=["eval_every=1000000000", "checkpoint_every=1000000000",
                                                              "threads=1"], out=tmp, **{"model.encoder": encoder})
        cfg.steps = cfg.warmup_steps
        trainer = Trainer(cfg)
        trainer.train(show_progress=False)
        for _ in range(2):
            trainer.update_once()
        start = time.process_time()
        for _ in range(updates):
            metrics = trainer.update_once()
        float(next(iter(metrics.values())))  # the last update has finished
        return (time.process_time() - start) / updates * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=40, help="timed updates at the CPU preset (paper size: / 10)")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODER_KINDS), choices=ENCODER_KINDS)
    parser.add_argument("--presets", nargs="+", default=["cpu", "classic"], choices=["cpu", "classic"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "update_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for preset in args.presets:
        updates = args.updates if preset == "cpu" else max(2, args.updates // 10)
        for encoder in args.encoders:
            rows.append({"preset": preset, "encoder": encoder, "cpu_ms_per_update": measure(preset, encoder, updates)})
            print(f"{preset:8s} {encoder:6s} {rows[-1]['cpu_ms_per_update']:9.1f} ms", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
