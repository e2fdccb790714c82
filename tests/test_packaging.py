"""The wheel: no generic top-level import names, and a deploy install without torch."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_namespaced_packages_and_keeps_torch_out_of_the_deploy_extra(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("resel-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"resel", "resel_train", "resel_deploy", "resel_experiments"}
    # the CPU kernel is compiled from its shipped source
    assert {"resel/export/onnx.py", "resel/export/tensorrt.py", "resel/cli/main.py", "resel/api.py",
            "resel_train/ops/cpu_ops.c", "resel_train/persist/checkpoint.py", "resel_deploy/contract.py",
            "resel_train/nets/registry.py", "resel_experiments/report.py", "resel_experiments/trials.py"} <= set(names)
    assert "resel = resel.cli.main:app" in entry_points
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    deploy = [r for r in requires if 'extra == "deploy"' in r]
    assert not any(r.startswith("torch") for r in base + deploy) and any(r.startswith("onnxruntime") for r in deploy)
    assert any(r.startswith("torch") and 'extra == "train"' in r for r in requires)


def _without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_a_checkout_resolves_export_and_cli_under_resel_and_nothing_else(tmp_path):
    code = (
        "import importlib, json, sys\n"
        "import resel.export.onnx, resel.cli.main\n"
        "refused = []\n"
        "for name in ('resel.resel_deploy', 'resel.resel_train', 'resel.tests', 'resel.benchmarks', 'resel.examples'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        refused.append(name)\n"
        "print(json.dumps({'onnx': resel.export.onnx.__file__, 'cli': resel.cli.main.__file__, 'refused': refused,\n"
        "                  'generic': sorted(m for m in sys.modules if m.split('.')[0] in ('export', 'cli'))}))\n"
    )
    env = {**_without_pythonpath(), "PYTHONPATH": str(ROOT)}  # also a checkout that is not installed
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["onnx"] == str(ROOT / "export" / "onnx.py") and got["cli"] == str(ROOT / "cli" / "main.py")
    assert got["refused"] == ["resel.resel_deploy", "resel.resel_train", "resel.tests", "resel.benchmarks",
                              "resel.examples"]
    assert got["generic"] == []  # one module, one name: no export.onnx beside resel.export.onnx


def test_plain_pytest_from_the_root():
    pytest_exe = Path(sys.executable).parent / "pytest"  # not `python -m pytest`, which puts the root on sys.path
    out = subprocess.run([str(pytest_exe), "-q", "-p", "no:cacheprovider", "tests/test_sweep.py", "-k",
                          "threads_follow"], cwd=ROOT, env=_without_pythonpath(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "1 passed" in out.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmark_scripts_start_as_documented(script):
    out = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, env=_without_pythonpath(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]
