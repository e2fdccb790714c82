"""Discrete-action deployment (Key-to-Door): ONNX greedy actions == torch step == parallel forward,
the controller's int actions on the torch and onnxruntime backends, rollout / eval with success rate."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from resel.cli.main import app
from resel.export.onnx import export_onnx, read_metadata
from resel_deploy.contract import state_in
from resel_deploy.controller import Controller
from resel_deploy.rollout import run_rollouts
from resel_train.stepwise import StepwisePolicy
from resel_train.testing import make_random_checkpoint

torch.set_num_threads(1)
OBS, N_ACT = 75, 4
KEYDOOR_MAMBA = dict(n_blocks=2, d_state=4, d_conv=1, expand=2, dt_rank=2, input_layers=3)  # the paper's layout, small
IN = ("obs", "prev_reward", "is_first", "noise")


@pytest.fixture(scope="module")
def keydoor(tmp_path_factory):
    ckpt = make_random_checkpoint(tmp_path_factory.mktemp("kd") / "ckpt.pt", seed=2, obs_dim=OBS, act_dim=N_ACT,
                                  embed=16, hidden=32, discrete=True, task_id="KeyToDoor-60",
                                  encoder_kwargs=KEYDOOR_MAMBA, perturb=0.2)
    return ckpt, export_onnx(ckpt, check_steps=60)


def test_graph_outputs_an_integer_action_and_the_logits(keydoor):
    _, report = keydoor
    meta = read_metadata(report.path)
    assert meta["discrete"] is True and meta["act_dim"] == N_ACT
    assert [o["name"] for o in meta["outputs"][:3]] == ["action", "action_logits", "action_log_probs"]
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    action = session.get_outputs()[0]
    assert action.type == "tensor(int64)" and action.shape == ["batch"]
    assert meta["parity_max_abs_error"] < 1e-4 and meta["parity_check"]["batches"] == [1, 7]


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_greedy_actions_equal_torch_step_and_parallel_forward(keydoor, batch):
    """300 steps with resets: identical greedy actions; logits match each other and the training forward."""
    ckpt, report = keydoor
    sp = StepwisePolicy.from_checkpoint(ckpt)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    names = sp.state_names()
    rng = np.random.default_rng(batch)
    length = 300
    obs = rng.random((batch, length, OBS), dtype=np.float32)
    first = (rng.random((batch, length)) < 0.03).astype(np.float32)
    first[:, 0] = 1
    noise = np.zeros((batch, N_ACT), np.float32)
    st_torch = sp.initial_state(batch)
    st_onnx = [t.numpy() for t in st_torch]
    actions, logits = [], []
    for t in range(length):
        feed = {"obs": obs[:, t], "prev_reward": np.zeros((batch, 1), np.float32), "is_first": first[:, t],
                "noise": noise}
        with torch.inference_mode():
            out = sp(*(torch.from_numpy(feed[k]) for k in IN), *st_torch)
        got = session.run(None, {**feed, **{state_in(n): s for n, s in zip(names, st_onnx, strict=True)}})
        assert got[0].dtype == np.int64 and np.array_equal(got[0], out[0].numpy()), f"step {t}"
        np.testing.assert_allclose(got[1], out[1].numpy(), rtol=1e-4, atol=1e-5)
        assert np.array_equal(out[0].numpy(), out[1].numpy().argmax(-1))  # greedy
        np.testing.assert_array_equal(out[4].numpy(), np.eye(N_ACT, dtype=np.float32)[out[0].numpy()])
        actions.append(out[0])
        logits.append(out[1])
        st_torch, st_onnx = out[3:], got[3:]
    # the parallel training forward over the same inputs, fed the one-hot actions the step chose
    keep = torch.from_numpy(1.0 - first)[..., None]
    obs_t = torch.from_numpy(obs)
    one_hot = torch.nn.functional.one_hot(torch.stack(actions, 1), N_ACT).float()
    prev_obs = torch.cat([torch.zeros(batch, 1, OBS), obs_t[:, :-1]], 1) * keep
    prev_act = torch.cat([torch.zeros(batch, 1, N_ACT), one_hot[:, :-1]], 1) * keep
    with torch.inference_mode():
        par_logits, par_log_probs, _ = sp.policy(obs_t, prev_obs, prev_act, None, torch.from_numpy(first).bool())
    torch.testing.assert_close(torch.stack(logits, 1), par_logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(torch.stack(actions, 1), par_logits.argmax(-1))
    torch.testing.assert_close(par_log_probs.exp().sum(-1), torch.ones(batch, length))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_controller_returns_valid_ints(keydoor, backend):
    ckpt, report = keydoor
    model = ckpt if backend == "torch" else report.path
    ctrl = Controller.load(model, backend=backend)
    assert ctrl.discrete and ctrl.act_dim == N_ACT
    sp = StepwisePolicy.from_checkpoint(ckpt)
    state = sp.initial_state(1)
    rng = np.random.default_rng(0)
    for t in range(40):
        o = rng.random(OBS, dtype=np.float32)
        a = ctrl.step(o)
        assert type(a) is int and 0 <= a < N_ACT
        ref, state = sp.step(torch.from_numpy(o)[None], None, torch.tensor([t == 0]), state)
        assert a == int(ref[0])
    with pytest.raises(ValueError, match="returns an int"):
        ctrl.step(o, out=np.zeros(N_ACT, np.float32))
    assert set(ctrl.last_output()) == {"action", "logits", "log_probs"}
    batch = Controller.load(model, backend=backend, batch=3, stochastic=True, seed=5)
    again = Controller.load(model, backend=backend, batch=3, stochastic=True, seed=5)
    seen = []
    for _ in range(60):
        o = rng.random((3, OBS), dtype=np.float32)
        got = batch.step_batch(o)
        assert got.dtype == np.int64 and got.shape == (3,) and np.all((0 <= got) & (got < N_ACT))
        assert np.array_equal(got, again.step_batch(o))  # seeded sampling is reproducible
        seen.append(got)
    assert len(np.unique(np.concatenate(seen))) > 1


def test_rollout_and_eval_report_the_success_rate(keydoor, tmp_path):
    ckpt, report = keydoor
    result = run_rollouts(report.path, None, episodes=2, backend="onnxruntime", flush_denormals=False, record=True)
    assert result.env_id == "KeyToDoor-60" and result.lengths == [85, 85]
    assert result.successes is not None and len(result.successes) == 2 and result.success_rate in (0.0, 0.5, 1.0)
    assert all(isinstance(a.item(), int) for a in result.actions)
    assert result.to_dict()["success_rate"] == result.success_rate
    out = CliRunner().invoke(app, ["eval", str(ckpt), "--episodes", "1"])
    assert out.exit_code == 0, out.output
    assert "success rate" in " ".join(out.output.split())
    with pytest.raises(ValueError, match="Discrete"):
        run_rollouts(report.path, "Pendulum-V", episodes=1, flush_denormals=False)
