"""benchmarks/gpu.py runs end to end (tiny sizes) on whatever device this machine has, and writes its JSON."""

import importlib.util
import json
import math
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
_spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
gpu = sys.modules["benchmark_gpu"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu)


def test_smoke_run_writes_every_case(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    gpu.main(["--smoke", "--out", str(out)])
    data = json.loads(out.read_text())
    rows = data["rows"]
    updates = [r for r in rows if r["case"] == "update"]
    assert {r["encoder"] for r in updates} == {"mlp", "mamba", "gru"}
    assert all(r["ms"] > 0 and r["gflop"] > 0 and math.isfinite(r["x_floor"]) for r in updates)
    scans = [r for r in rows if r["case"] == "scan"]
    assert {r["pass"] for r in scans} == {"fwd", "fwd+bwd"} and all(r["ms"] > 0 for r in scans)
    train = [r for r in rows if r["case"] == "train"]
    assert len(train) == 1 and (train[0].get("env_steps_per_s", 0) > 0 or "skipped" in train[0])
    assert data["rates"]["matmul_fp32_tflops"] > 0 and "update (ms per update" in capsys.readouterr().out
