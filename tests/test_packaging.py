"""The wheel: no generic top-level import names, and a deploy install without torch."""

import subprocess
import sys
import zipfile
from pathlib import Path

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
    assert top_level == {"resel", "resel_train", "resel_deploy"}
    assert {"resel/export/onnx.py", "resel/export/tensorrt.py", "resel/cli/main.py", "resel/api.py",
            "resel_train/ops/cpu_ops.c"} <= set(names)  # the CPU kernel is compiled from its shipped source
    assert "resel = resel.cli.main:app" in entry_points
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    deploy = [r for r in requires if 'extra == "deploy"' in r]
    assert not any(r.startswith("torch") for r in base + deploy) and any(r.startswith("onnxruntime") for r in deploy)
    assert any(r.startswith("torch") and 'extra == "train"' in r for r in requires)
