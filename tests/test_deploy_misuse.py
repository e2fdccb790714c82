"""A tampered policy file, a bad reset() and two threads on one Controller: each refused by name, or made safe."""

from __future__ import annotations

import json
import threading

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from resel.cli.main import app
from resel.export.onnx import export_onnx
from resel_deploy import Controller
from resel_deploy.contract import MetadataError
from resel_train.testing import SMALL_MAMBA, make_random_checkpoint

OBS, ACT = 3, 2
LOW, HIGH = [-2.0, 0.0], [2.0, 1.0]
runner = CliRunner()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("misuse")
    ckpt = make_random_checkpoint(tmp / "c.pt", obs_dim=OBS, act_dim=ACT, embed=16, hidden=16,
                                  encoder_kwargs=SMALL_MAMBA, action_low=LOW, action_high=HIGH, task_id="Pendulum-V")
    return export_onnx(ckpt, tmp / "p.onnx", check_steps=8).path


def tampered(src, dst, key, value, raw=False):
    model = onnx.load(str(src))
    entry = next(e for e in model.metadata_props if e.key == key)
    entry.value = value if raw else json.dumps(value)
    onnx.save(model, str(dst))
    return dst


# (name, key, new value, raw text instead of JSON, words the message must contain)
CASES = [
    ("obs_dim changed", "obs_dim", 5, False, ["'obs_dim'", "(batch, 5)", "(batch, 3)"]),
    ("act_dim changed", "act_dim", 3, False, ["'act_dim'", "(batch, 3)", "(batch, 2)"]),
    ("obs_dim not a number", "obs_dim", "abc", False, ["'obs_dim'", "positive integer", "'abc'"]),
    ("state_layout not JSON", "state_layout", "not json{", True, ["'state_layout'", "must be a list"]),
    ("state_layout entry without shape", "state_layout", [{"name": 3}], False, ["'state_layout'", "must be a list"]),
    ("state_layout shape changed", "state_layout",
     [{"name": "prev_obs", "shape": ["batch", 3]}, {"name": "prev_act", "shape": ["batch", 2]},
      {"name": "block0.conv", "shape": ["batch", 7, 3]}, {"name": "block0.ssm", "shape": ["batch", 32, 8]}], False,
     ["'state_layout'", "block0.conv"]),
    ("inputs renamed", "inputs", [{"name": "x"}], False, ["'inputs'", "obs"]),
    ("reward_as_input not a bool", "reward_as_input", "yes", False, ["'reward_as_input'", "true or false"]),
    ("action_low wider than the graph's", "action_low", [-3.0, 0.0], False, ["'action_low'", "[-3.0, 0.0]", "graph"]),
    ("action_high narrower than the graph's", "action_high", [1.0, 1.0], False, ["'action_high'", "graph"]),
    ("action_high too short", "action_high", [1.0], False, ["'action_high'", "2 finite numbers"]),
    ("action_low NaN", "action_low", "[NaN, 0.0]", True, ["'action_low'", "finite"]),
    ("action_high below action_low", "action_high", [-3.0, 1.0], False, ["'action_high'", "below action_low"]),
]


@pytest.mark.parametrize("name, key, value, raw, words", CASES, ids=[c[0] for c in CASES])
def test_tampered_metadata_is_refused_naming_the_key(tmp_path, onnx_file, name, key, value, raw, words):
    path = tampered(onnx_file, tmp_path / "t.onnx", key, value, raw)
    before = path.read_bytes()
    with pytest.raises(MetadataError) as info:
        Controller.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "export it again" in message
    for word in words:
        assert word in message, (name, message)
    result = runner.invoke(app, ["rollout", str(path), "--env", "Pendulum-V", "--episodes", "1"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and f"metadata key '{key}'" in " ".join(result.output.split())
    assert path.read_bytes() == before


def test_untampered_file_loads_and_its_bounds_are_the_graphs(onnx_file):
    ctrl = Controller.load(onnx_file, safe_action=[0.0, 0.5])
    assert ctrl.action_low.tolist() == LOW and ctrl.action_high.tolist() == HIGH
    assert np.isfinite(ctrl.step(np.zeros(OBS))).all()
    fresh = Controller.load(onnx_file)  # the bounds probe at load leaves no state behind
    np.testing.assert_array_equal(fresh.step(np.ones(OBS)), Controller.load(onnx_file, warmup=0).step(np.ones(OBS)))


# (rows, whether it is accepted)
RESET_ROWS = [([5], False), ([-1], False), ("x", False), ([0.5], False), ([[0, 1]], False), ([True], False),
              ([1], True), ([0, 1], True), ([True, False], True), ([], True), (np.int64(1), True)]


@pytest.mark.parametrize("rows, ok", RESET_ROWS, ids=[repr(r) for r, _ in RESET_ROWS])
def test_reset_rows_are_checked(onnx_file, rows, ok):
    ctrl = Controller.load(onnx_file, batch=2)
    ctrl.step_batch(np.zeros((2, OBS)))
    if ok:
        ctrl.reset(rows=rows)
        expected = np.zeros(2, np.float32)
        expected[np.asarray(rows, dtype=bool if np.asarray(rows).dtype == bool else np.intp)] = 1.0
        assert ctrl._h.is_first.tolist() == expected.tolist()
        return
    with pytest.raises(ValueError, match=r"rows must be robot indices in 0\.\.1 or a \(2,\) bool mask"):
        ctrl.reset(rows=rows)
    assert ctrl._h.is_first.tolist() == [0.0, 0.0]  # nothing was reset


@pytest.mark.parametrize("batch", [1, 3])
def test_two_threads_on_one_controller_get_the_actions_of_a_sequential_run(onnx_file, batch):
    """Each call's action must be the one a sequential replay of the executed calls gives (no torn buffers)."""
    ctrl = Controller.load(onnx_file, batch=batch)
    executed: list[tuple[int, np.ndarray]] = []
    run = ctrl._backend.run

    def logged_run():
        executed.append((threading.get_ident(), ctrl._h.obs.copy()))
        run()

    ctrl._backend.run = logged_run
    rng = np.random.default_rng(0)
    streams = [rng.standard_normal((600, batch, OBS)).astype(np.float32) for _ in range(2)]
    actions: dict[int, list[np.ndarray]] = {}

    def worker(i: int) -> None:
        step = ctrl.step if batch == 1 else ctrl.step_batch
        actions[threading.get_ident()] = [np.reshape(step(o[0] if batch == 1 else o), (batch, ACT)) for o in streams[i]]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    replay = Controller.load(onnx_file, batch=batch)
    expected: dict[int, list[np.ndarray]] = {}
    for tid, obs in executed:
        expected.setdefault(tid, []).append(replay.step_batch(obs))
    assert sorted(len(v) for v in actions.values()) == [600, 600]
    for tid, got in actions.items():
        np.testing.assert_array_equal(np.stack(got), np.stack(expected[tid]))
