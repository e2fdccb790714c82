"""TensorRT: engines (fp32, fp16 with fp32 state math) match onnxruntime; clear errors where it can't run.

The engine tests need the tensorrt package and an NVIDIA GPU; elsewhere they skip with the reason.
"""

import json

import numpy as np
import pytest
import torch

from resel.export.tensorrt import TensorRTUnavailable, build_engine, tensorrt_unavailable_reason
from resel_deploy import Controller
from resel_deploy.artifacts import read_engine
from resel_deploy.contract import state_in, state_out
from resel_train.testing import make_random_checkpoint

REASON = tensorrt_unavailable_reason()
needs_trt = pytest.mark.skipif(REASON is not None, reason=str(REASON))


@pytest.fixture(autouse=True, scope="module")
def _restore_float_environment():
    """Controllers flush denormals on this thread (FTZ/DAZ); leave the thread as we found it for other tests."""
    yield
    torch.set_flush_denormal(False)


@pytest.mark.skipif(REASON is None, reason="TensorRT is available here")
def test_without_tensorrt_one_line_error(tmp_path):
    ckpt = make_random_checkpoint(tmp_path / "c.pt", obs_dim=3, act_dim=1, embed=8, hidden=16, encoder="mlp")
    with pytest.raises(TensorRTUnavailable) as err:
        build_engine(ckpt)
    message = str(err.value)
    assert "\n" not in message and "pip install" in message
    assert not (tmp_path / "c.onnx").exists(), "fails before doing any export work"
    with pytest.raises(TensorRTUnavailable, match="pip install"):
        Controller.load(ckpt, backend="tensorrt")


def test_engine_needs_its_metadata(tmp_path):
    engine = tmp_path / "policy.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="missing its metadata file policy.engine.json"):
        read_engine(engine)
    (tmp_path / "policy.engine.json").write_text(json.dumps({"engine_format": "something-else"}))
    with pytest.raises(ValueError, match="not describe a RESeL TensorRT engine"):
        read_engine(engine)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("trt") / "c.pt", seed=2, perturb=0.05)


@needs_trt
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_matches_onnxruntime(ckpt, fp16):
    path = build_engine(ckpt, fp16=fp16, max_batch=8)
    _, meta = read_engine(path)
    assert meta["precision"] == ("fp16-matmul" if fp16 else "fp32")
    assert meta["engine_parity_max_abs_error"] < (5e-2 if fp16 else 1e-3)
    onnx_path = ckpt.with_suffix(".fp16.onnx" if fp16 else ".onnx")
    trt_ctrl = Controller.load(path, backend="tensorrt", batch=7)
    ort_ctrl = Controller.load(onnx_path, batch=7)
    rng = np.random.default_rng(0)
    for _t in range(300):
        obs = rng.standard_normal((7, 17)).astype(np.float32)
        first = rng.random(7) < 0.02
        a = trt_ctrl.step_batch(obs, is_first=first)
        b = ort_ctrl.step_batch(obs, is_first=first)
        np.testing.assert_allclose(a, b, atol=5e-2 if fp16 else 1e-3)
    # the state keeps decaying in fp16 mode: exp(dt * A) is computed in fp32
    ssm_trt, ssm_ort = trt_ctrl.get_state()["block0.ssm"], ort_ctrl.get_state()["block0.ssm"]
    np.testing.assert_allclose(ssm_trt, ssm_ort, atol=5e-2 if fp16 else 1e-3)


@needs_trt
def test_ping_pong_buffers_are_distinct(ckpt):
    ctrl = Controller.load(ckpt, backend="tensorrt")
    backend = ctrl._backend
    ptrs = [t.data_ptr() for s in backend._d_state for t in s]
    assert len(set(ptrs)) == len(ptrs)
    for i in range(2):
        addresses = dict(backend._addresses[i])
        for name in ctrl.state_names:
            assert addresses[state_in(name)] != addresses[state_out(name)]
    assert torch.cuda.is_available()
