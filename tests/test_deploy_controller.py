"""Controller: backends agree, episode starts, batches, stochastic seeding, validation, no per-step buffers."""

import gc
import tracemalloc

import numpy as np
import pytest
import torch

from resel.export.onnx import export_onnx
from resel_deploy import Controller
from resel_deploy.controller import detect_kind
from resel_train.persist.checkpoint import CheckpointError
from resel_train.stepwise import StepwisePolicy
from resel_train.testing import SMALL_MAMBA, make_random_checkpoint

torch.set_num_threads(1)
OBS, ACT = 7, 3
LOW, HIGH = [-2.0, 0.0, -1.0], [2.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctrl")
    ckpt = make_random_checkpoint(folder / "c.pt", obs_dim=OBS, act_dim=ACT, embed=32, hidden=64,
                                  encoder_kwargs=SMALL_MAMBA, reward_as_input=True, action_low=LOW,
                                  action_high=HIGH, task_id="Toy", perturb=0.05, seed=5)
    onnx_path = export_onnx(ckpt, check_steps=20).path
    return ckpt, onnx_path


def observations(n, seed=0, batch=None):
    rng = np.random.default_rng(seed)
    shape = (n, OBS) if batch is None else (n, batch, OBS)
    return rng.standard_normal(shape).astype(np.float32)


def test_backends_agree_and_actions_are_in_bounds(model):
    ckpt, onnx_path = model
    a = Controller.load(onnx_path)
    b = Controller.load(ckpt, backend="torch")
    assert (a.obs_dim, a.act_dim, a.batch, a.backend, b.backend) == (OBS, ACT, 1, "onnxruntime", "torch")
    assert a.task_id == "Toy" and a.reward_as_input and a.state_names == b.state_names
    acts = []
    for t, obs in enumerate(observations(60)):
        if t == 25:
            a.reset()
            b.reset()
        x, y = a.step(obs, reward=0.1 * t), b.step(obs.astype(np.float64), reward=0.1 * t)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
        acts.append(x)
    for name, s in a.get_state().items():
        np.testing.assert_allclose(s, b.get_state()[name], rtol=1e-5, atol=1e-5)
    acts = np.array(acts)
    assert np.all(acts >= np.array(LOW)) and np.all(acts <= np.array(HIGH))
    assert acts.std(0).min() > 0  # not constant


def test_reset_starts_a_fresh_episode(model):
    _, onnx_path = model
    a = Controller.load(onnx_path)
    seq = observations(30, seed=1)
    for obs in seq:
        a.step(obs, 1.0)
    a.reset()
    fresh = Controller.load(onnx_path)
    for obs in seq[:10]:
        np.testing.assert_allclose(a.step(obs, 0.5), fresh.step(obs, 0.5), rtol=1e-6, atol=1e-6)
    # a zero state (with a zero previous reward) is equivalent to is_first
    c = Controller.load(onnx_path)
    c.step(seq[0])
    c.set_state({k: np.zeros_like(v) for k, v in c.get_state().items()})
    d = Controller.load(onnx_path)
    d.step(seq[0])
    d.reset()
    np.testing.assert_allclose(c.step(seq[1], 0.0), d.step(seq[1], 3.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_batch_of_robots_equals_single_robots(model, backend):
    ckpt, onnx_path = model
    path = onnx_path if backend == "onnxruntime" else ckpt
    batch, n = 4, 20
    ctrl = Controller.load(path, backend=backend, batch=batch)
    singles = [Controller.load(path, backend=backend) for _ in range(batch)]
    seq = observations(n, seed=2, batch=batch)
    rewards = np.random.default_rng(3).standard_normal((n, batch)).astype(np.float32)
    out = np.empty((batch, ACT), np.float32)
    for t in range(n):
        first = np.zeros(batch, bool)
        if t == 8:
            first[1] = True  # robot 1 starts a new episode, the others continue
            singles[1].reset()
        got = ctrl.step_batch(seq[t], rewards[t], is_first=first, out=out)
        assert got is out
        for i, single in enumerate(singles):
            np.testing.assert_allclose(got[i], single.step(seq[t, i], rewards[t, i]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="step_batch"):
        ctrl.step(seq[0, 0])
    with pytest.raises(ValueError, match=r"\(4, 7\)"):
        ctrl.step_batch(seq[0, :3])


def test_stochastic_is_seeded_and_backend_independent(model):
    ckpt, onnx_path = model
    runs = {}
    for key, path, backend, seed in (("a", onnx_path, "onnxruntime", 7), ("b", onnx_path, "onnxruntime", 7),
                                     ("c", ckpt, "torch", 7), ("d", onnx_path, "onnxruntime", 8)):
        ctrl = Controller.load(path, backend=backend, stochastic=True, seed=seed)
        runs[key] = np.array([ctrl.step(o) for o in observations(20, seed=4)])
    det = Controller.load(onnx_path)
    deterministic = np.array([det.step(o) for o in observations(20, seed=4)])
    np.testing.assert_array_equal(runs["a"], runs["b"])
    np.testing.assert_allclose(runs["a"], runs["c"], rtol=1e-5, atol=1e-5)
    assert np.abs(runs["a"] - runs["d"]).max() > 1e-3
    assert np.abs(runs["a"] - deterministic).max() > 1e-3


def test_validation_errors(model, tmp_path):
    ckpt, onnx_path = model
    ctrl = Controller.load(onnx_path)
    with pytest.raises(ValueError, match=r"obs must have shape \(7,\); got \(6,\)"):
        ctrl.step(np.zeros(6))
    bad = np.zeros(OBS)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ctrl.step(bad)
    with pytest.raises(ValueError, match="finite"):
        ctrl.step(np.zeros(OBS), reward=float("inf"))
    with pytest.raises(ValueError, match="backend='torch' runs checkpoints"):
        Controller.load(onnx_path, backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        Controller.load(onnx_path, backend="tflite")
    with pytest.raises(FileNotFoundError):
        Controller.load(tmp_path / "missing.onnx")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="unrecognised model file"):
        Controller.load(text)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[:300])
    with pytest.raises(CheckpointError):
        Controller.load(corrupt, backend="torch")
    assert detect_kind(ckpt) == "checkpoint" and detect_kind(onnx_path) == "onnx"


def test_checkpoint_through_onnxruntime_exports_in_memory(model):
    ckpt, onnx_path = model
    a, b = Controller.load(ckpt, backend="onnxruntime"), Controller.load(onnx_path)
    for obs in observations(10, seed=9):
        np.testing.assert_allclose(a.step(obs, 0.3), b.step(obs, 0.3), rtol=1e-6, atol=1e-6)


def test_no_per_step_buffers(model):
    """Bound buffers never move, and stepping with ``out=`` holds on to no memory."""
    _, onnx_path = model
    ctrl = Controller.load(onnx_path)
    backend = ctrl._backend
    ptrs = [a.ctypes.data for a in backend.host.inputs() + backend.host.outputs()]
    state_ptrs = [a.ctypes.data for s in backend._state for a in s]
    assert len(set(state_ptrs)) == len(state_ptrs), "ping-pong: input and output state are different buffers"
    out = np.zeros(ACT, np.float32)
    obs = observations(1)[0]
    gc.collect()
    gc.disable()  # a collection of other tests' garbage inside the window is not the controller's doing
    try:
        tracemalloc.start()
        for _ in range(200):  # one-time lazy allocations (interpreter caches) happen here
            ctrl.step(obs, 0.0, out=out)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(500):
            ctrl.step(obs, 0.0, out=out)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert current - base < 2048 and peak - base < 4096, (current - base, peak - base)
    assert ptrs == [a.ctypes.data for a in backend.host.inputs() + backend.host.outputs()]
    assert state_ptrs == [a.ctypes.data for s in backend._state for a in s]


def test_stepwise_convenience_step(model):
    ckpt, _ = model
    sp = StepwisePolicy.from_checkpoint(ckpt)
    state = sp.initial_state(2)
    action, state = sp.step(torch.randn(2, OBS), None, torch.tensor([True, False]), state)
    assert action.shape == (2, ACT) and [tuple(s.shape[1:]) for s in state] == [s.shape for s in sp.state_spec()]


def test_deploy_never_imports_the_trainer(model):
    """resel_deploy and export use the networks and the checkpoint loader only."""
    import subprocess
    import sys

    _, onnx_path = model
    code = (
        "import sys, resel_deploy, resel_deploy.rollout, resel.export.onnx, resel.export.tensorrt\n"
        f"resel_deploy.Controller.load({str(onnx_path)!r}).step([0.0] * {OBS})\n"
        "bad = [m for m in sys.modules if m.startswith('resel_train.') and m.split('.')[1] in "
        "('trainer', 'buffer', 'algo', 'config')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_onnx_controller_runs_without_torch_or_the_onnx_package(model, tmp_path):
    """What a robot with only numpy and onnxruntime runs: import, load, step; the same actions as here."""
    import json
    import subprocess
    import sys

    _, onnx_path = model
    obs = observations(30, seed=3)
    expected = Controller.load(onnx_path, backend="onnxruntime")
    want = [expected.step(o, reward=0.1 * i).tolist() for i, o in enumerate(obs)]
    np.save(tmp_path / "obs.npy", obs)
    code = (
        "import sys\n"
        "for blocked in ('torch', 'onnx', 'resel_train', 'gymnasium'):\n"
        "    sys.modules[blocked] = None  # any import of these raises ImportError\n"
        "import json, numpy as np\n"
        "from resel_deploy import Controller\n"
        f"ctrl = Controller.load({str(onnx_path)!r}, backend='onnxruntime')\n"
        f"obs = np.load({str(tmp_path / 'obs.npy')!r})\n"
        "print(json.dumps([ctrl.step(o, reward=0.1 * i).tolist() for i, o in enumerate(obs)]))\n"
        "loaded = [m for m in sys.modules if m.startswith(('torch.', 'resel_train', 'resel.export', 'onnx.'))\n"
        "          and sys.modules[m] is not None]\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_array_equal(np.array(json.loads(out.stdout)), np.array(want, dtype=np.float32))
