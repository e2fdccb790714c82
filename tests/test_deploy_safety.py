"""Controller safety: no backend hands out a non-finite action; argument errors name the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resel_deploy import Controller, NonFiniteAction
from resel_train.testing import SMALL_MAMBA, make_random_checkpoint

OBS, ACT = 3, 2
LOW, HIGH = [-2.0, 0.0], [2.0, 1.0]
HUGE = np.full(OBS, 3e38, np.float32)  # finite input that overflows inside the network -> NaN action


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("safe") / "c.pt", obs_dim=OBS, act_dim=ACT, embed=16,
                                  hidden=16, encoder_kwargs=SMALL_MAMBA, action_low=LOW, action_high=HIGH)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_nonfinite_action_raises_and_resets(ckpt, backend):
    ctrl = Controller.load(ckpt, backend=backend, threads=1)
    ok = ctrl.step(np.zeros(OBS))
    with pytest.raises(NonFiniteAction, match=f"{backend} backend produced a non-finite action for robot"):
        ctrl.step(HUGE)
    assert all(np.isfinite(v).all() for v in ctrl.get_state().values())  # the poisoned state was zeroed
    np.testing.assert_allclose(ctrl.step(np.zeros(OBS)), ok, atol=1e-6)  # and the next step starts an episode


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_safe_action_is_returned_instead_when_asked_for(ckpt, backend):
    ctrl = Controller.load(ckpt, backend=backend, batch=2, safe_action=[0.0, 0.5], threads=1)
    out = ctrl.step_batch(np.stack([np.zeros(OBS, np.float32), HUGE]))
    assert np.isfinite(out).all() and out[1].tolist() == [0.0, 0.5] and out[0].tolist() != [0.0, 0.5]
    assert ctrl.nonfinite_steps == 1
    with pytest.raises(ValueError, match="safe_action must be finite and within the action bounds"):
        Controller.load(ckpt, backend=backend, safe_action=[5.0, 0.5])


def test_step_argument_errors_name_the_argument(ckpt):
    ctrl = Controller.load(ckpt, backend="torch")
    for bad in ("abc", None, ["a", "b", "c"]):
        with pytest.raises(TypeError, match=r"obs must be a numeric array of shape \(3,\)"):
            ctrl.step(bad)
    with pytest.raises(ValueError, match=r"obs must have shape \(3,\)"):
        ctrl.step(np.zeros(4))
    assert np.isfinite(ctrl.step(np.zeros(OBS), reward=None)).all()  # None: no reward, as in step_batch
    with pytest.raises(TypeError, match="reward must be a number"):
        ctrl.step(np.zeros(OBS), reward="1")
    with pytest.raises(ValueError, match=r"out must have shape \(2,\)"):
        ctrl.step(np.zeros(OBS), out=np.zeros((1, 2), np.float32))
    with pytest.raises(TypeError, match="out must be a float32/float64 numpy array"):
        ctrl.step(np.zeros(OBS), out=[0.0, 0.0])
    batch = Controller.load(ckpt, backend="torch", batch=2)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 2\)"):
        batch.step_batch(np.zeros((2, OBS)), out=np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="rewards must be a numeric array"):
        batch.step_batch(np.zeros((2, OBS)), rewards=["x", "y"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_a_gpu_is_a_clear_error(ckpt):
    with pytest.raises(ValueError, match="device='cuda' was asked for but torch sees no CUDA GPU"):
        Controller.load(ckpt, backend="torch", device="cuda")
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"):
        Controller.load(ckpt, backend="torch", device="gpu")
