"""The experiments package: the report, the plots and the sweep manifest load without torch; the one statistic
(mean ± standard error over runs) against a hand computation."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resel_experiments.plots import mean_and_se, plot_runs

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module", ["resel_experiments.report", "resel_experiments.plots",
                                    "resel_experiments.sweep", "resel_experiments.metrics"])
def test_loads_without_torch(module):
    code = f"import sys, {module}\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_resel_report_runs_without_torch(tmp_path):
    run = tmp_path / "Pendulum-P_mlp_s0"
    run.mkdir()
    (run / "config.yaml").write_text("env: Pendulum-P\nseed: 0\nsteps: 20\nmodel:\n  encoder: mlp\n")
    (run / "metrics.csv").write_text("step,eval_return\n10,-900\n20,-500\n")
    code = ("import sys\nfrom resel.cli.main import app\n"
            f"try:\n    app(['report', {str(tmp_path)!r}])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "report" / "report.md").read_text().count("-500.0") == 1


def test_mean_and_se_by_hand():
    # run a logs at 0, 10, 20, 30; run b at 0, 15, 25: on the union of steps up to b's last (25), each takes its
    # last value at or before the step
    steps, mean, se = mean_and_se([([0, 10, 20, 30], [1.0, 2.0, 3.0, 4.0]), ([0, 15, 25], [5.0, 7.0, 9.0])])
    assert steps.tolist() == [0, 10, 15, 20, 25]
    a, b = np.array([1, 2, 2, 3, 3.0]), np.array([5, 5, 7, 7, 9.0])
    np.testing.assert_allclose(mean, (a + b) / 2)
    np.testing.assert_allclose(se, np.abs(a - b) / 2)  # two runs: std (ddof 1) / sqrt(2) = |a - b| / 2
    one = mean_and_se([([0, 1], [3.0, 4.0])])
    assert one[2] is None and one[1].tolist() == [3.0, 4.0]


def test_plot_runs_refuses_an_unknown_metric_and_writes_a_png(tmp_path):
    for seed, values in ((0, (1, 2)), (1, (3, 5))):
        run = tmp_path / f"r{seed}"
        run.mkdir()
        (run / "metrics.csv").write_text(f"step,eval_return\n10,{values[0]}\n20,{values[1]}\n")
    with pytest.raises(ValueError, match="no run has values for metric 'q'"):
        plot_runs({"x": [tmp_path / "r0"]}, tmp_path / "p.png", metric="q")
    png = plot_runs({"x": [tmp_path / "r0", tmp_path / "r1"]}, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_another_metric_by_hand(tmp_path):
    from resel_experiments.report import write_report

    for seed, rates in ((0, (0.1, 0.5)), (1, (0.3, 0.9))):
        run = tmp_path / f"KeyToDoor-60_mamba_s{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(f"env: KeyToDoor-60\nseed: {seed}\nsteps: 20\nmodel:\n  encoder: mamba\n")
        (run / "metrics.csv").write_text(f"step,eval_return,eval_success_rate\n10,1,{rates[0]}\n20,2,{rates[1]}\n")
    report = write_report(tmp_path, [10, 20], tmp_path / "out", metric="eval_success_rate")
    cell = report.cells[("KeyToDoor-60", "mamba", 20)]
    assert cell.n == 2 and cell.mean == pytest.approx(0.7) and cell.se == pytest.approx(0.2)  # |0.5 - 0.9| / 2
    assert report.cells[("KeyToDoor-60", "mamba", 10)].mean == pytest.approx(0.2)
    assert "eval_success_rate" in report.markdown.read_text()
