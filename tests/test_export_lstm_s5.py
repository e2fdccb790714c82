"""LSTM and S5 policies through deployment: ONNX graph with explicit real state, parity certificate,
onnxruntime == StepwisePolicy == the parallel Policy.forward over episodes with resets, and the
Controller on both backends."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resel.export.onnx import export_onnx, read_metadata
from resel_deploy import Controller
from resel_deploy.contract import state_in, state_out
from resel_train.stepwise import StepwisePolicy
from resel_train.testing import make_random_checkpoint

torch.set_num_threads(1)
OBS, ACT = 5, 2
IN = ("obs", "prev_reward", "is_first", "noise")
CASES = {
    "lstm": ({}, ["lstm.h", "lstm.c"], [(32,), (32,)]),
    "s5": ({"n_layers": 2, "d_state": 8}, ["layer0.re", "layer0.im", "layer1.re", "layer1.im"], [(8,)] * 4),
}


@pytest.fixture(autouse=True, scope="module")
def _restore_float_environment():
    """Controllers flush denormals on this thread; leave the thread as we found it for other tests."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    kind = request.param
    ckpt = make_random_checkpoint(tmp_path_factory.mktemp(kind) / "c.pt", encoder=kind, encoder_kwargs=CASES[kind][0],
                                  obs_dim=OBS, act_dim=ACT, embed=16, hidden=32, reward_as_input=True,
                                  action_low=[-2.0, 0.0], action_high=[2.0, 1.0], task_id=None, perturb=0.05, seed=2)
    return kind, ckpt, export_onnx(ckpt, check_steps=40)


def test_graph_has_explicit_real_state_and_a_parity_certificate(exported):
    kind, _, report = exported
    names, shapes = CASES[kind][1], CASES[kind][2]
    model = onnx.load(str(report.path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [*IN, state_in("prev_obs"), state_in("prev_act"),
                                                   *(state_in(n) for n in names)]
    assert [o.name for o in model.graph.output][3:] == [state_out("prev_obs"), state_out("prev_act"),
                                                         *(state_out(n) for n in names)]
    for v in list(model.graph.input) + list(model.graph.output):
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, v.name
    meta = read_metadata(report.path)
    assert meta["encoder"] == kind
    assert [(s["name"], tuple(s["shape"][1:])) for s in meta["state_layout"][2:]] == list(zip(names, shapes,
                                                                                               strict=True))
    assert meta["parity_max_abs_error"] == report.max_abs_error < 1e-5


def test_onnx_equals_torch_step_equals_parallel_forward(exported):
    _, ckpt, report = exported
    sp = StepwisePolicy.from_checkpoint(ckpt)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(report.path), opts, providers=["CPUExecutionProvider"])
    batch, length, names = 3, 120, sp.state_names()
    rng = np.random.default_rng(0)
    first = np.zeros((batch, length), np.float32)
    first[:, 0] = 1
    first[1, [30, 31, 77]] = 1  # incl. consecutive episode starts
    first[2, -1] = 1
    seq = {"obs": rng.standard_normal((batch, length, OBS), dtype=np.float32),
           "prev_reward": rng.standard_normal((batch, length, 1), dtype=np.float32),
           "is_first": first, "noise": rng.standard_normal((batch, length, ACT), dtype=np.float32) * 0.5}
    st_torch = sp.initial_state(batch)
    st_onnx = [t.numpy() for t in st_torch]
    outs = []
    for t in range(length):
        feed = {k: v[:, t] for k, v in seq.items()}
        with torch.inference_mode():
            out = sp(*(torch.from_numpy(feed[k]) for k in IN), *st_torch)
        got = session.run(None, {**feed, **{state_in(n): s for n, s in zip(names, st_onnx, strict=True)}})
        for a, b in zip(got, out, strict=True):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"step {t}")
        st_torch, st_onnx = out[3:], got[3:]
        outs.append(out)
    keep = torch.from_numpy(1.0 - first)[..., None]
    obs, rew = torch.from_numpy(seq["obs"]), torch.from_numpy(seq["prev_reward"])
    squashed = torch.stack([o[4] for o in outs], 1)
    prev_obs = torch.cat([torch.zeros(batch, 1, OBS), obs[:, :-1]], 1) * keep
    prev_act = torch.cat([torch.zeros(batch, 1, ACT), squashed[:, :-1]], 1) * keep
    with torch.inference_mode():
        mean, log_std, final = sp.policy(obs, prev_obs, prev_act, rew * keep, torch.from_numpy(first).bool())
    torch.testing.assert_close(torch.stack([o[1] for o in outs], 1), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack([o[2] for o in outs], 1), log_std, rtol=1e-5, atol=1e-5)
    for a, b in zip(st_torch[2:], final, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_controller_backends_agree(exported):
    _, ckpt, report = exported
    a, b = Controller.load(report.path), Controller.load(ckpt, backend="torch")
    assert a.state_names == b.state_names
    rng = np.random.default_rng(1)
    acts = []
    for t in range(50):
        if t == 20:
            a.reset()
            b.reset()
        obs = rng.standard_normal(OBS).astype(np.float32)
        x, y = a.step(obs, reward=0.1 * t), b.step(obs, reward=0.1 * t)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
        acts.append(x)
    for name, s in a.get_state().items():
        np.testing.assert_allclose(s, b.get_state()[name], rtol=1e-5, atol=1e-5)
    acts = np.array(acts)
    assert np.all(acts >= [-2.0, 0.0]) and np.all(acts <= [2.0, 1.0]) and acts.std(0).min() > 0
