"""ONNX export: graph contract, metadata, parity certificate, and ONNX == torch step == torch parallel.

The paper-size Mamba policy (d_model 256, d_state 64, d_conv 8) is exported once per module.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resel.export.onnx import (
    OPSET,
    ExportError,
    ParityError,
    export_onnx,
    read_metadata,
    to_mixed_fp16,
)
from resel_deploy.contract import state_in, state_out
from resel_train.persist.checkpoint import CheckpointError
from resel_train.stepwise import StepwisePolicy
from resel_train.testing import SMALL_MAMBA, make_random_checkpoint

torch.set_num_threads(1)
IN = ("obs", "prev_reward", "is_first", "noise")


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    ckpt = make_random_checkpoint(tmp_path_factory.mktemp("paper") / "ckpt.pt", seed=3,
                                  action_low=[-2.0, -1, -1, 0, -1, -1], action_high=[2.0, 1, 1, 0.5, 1, 1])
    report = export_onnx(ckpt, check_steps=16)
    return ckpt, report


def ort_session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_graph_contract_and_metadata(paper):
    ckpt, report = paper
    path = report.path
    assert path == ckpt.with_suffix(".onnx") and path.is_file()
    assert list(path.parent.glob("*.data")) == [], "weights must be embedded, no external-data sidecar"
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert all(i.data_location == onnx.TensorProto.DEFAULT for i in model.graph.initializer)
    assert model.opset_import[0].version == OPSET
    names = ["prev_obs", "prev_act", "block0.conv", "block0.ssm"]
    assert [i.name for i in model.graph.input] == [*IN, *(state_in(n) for n in names)]
    assert [o.name for o in model.graph.output] == [
        "action", "action_mean", "action_log_std", *(state_out(n) for n in names)]
    shapes = {}
    for v in list(model.graph.input) + list(model.graph.output):
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, v.name
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", v.name  # dynamic batch axis
        shapes[v.name] = [d.dim_value for d in dims[1:]]
    assert shapes[state_in("block0.ssm")] == [512, 64] and shapes[state_in("block0.conv")] == [512, 7]
    assert shapes["is_first"] == [] and shapes["prev_reward"] == [1]
    meta = read_metadata(path)
    assert meta["obs_dim"] == 17 and meta["act_dim"] == 6 and meta["reward_as_input"] is False
    assert meta["task_id"] == "Walker2d" and meta["action_low"][0] == -2.0 and meta["action_high"][3] == 0.5
    assert [s["name"] for s in meta["state_layout"]] == names
    assert meta["state_layout"][3]["shape"] == ["batch", 512, 64]
    assert meta["toolkit_version"] and meta["precision"] == "fp32" and meta["opset"] == OPSET
    assert 0 <= meta["parity_max_abs_error"] == report.max_abs_error < 1e-4
    assert meta["parity_check"]["batches"] == [1, 7]
    # every stored value is JSON
    for entry in model.metadata_props:
        json.loads(entry.value)
    assert f"max abs err {report.max_abs_error:.2e}" in dict(report.rows())["parity vs torch"]  # the measured figure


def episode_inputs(batch, length, obs_dim, act_dim, seed):
    rng = np.random.default_rng(seed)
    first = np.zeros((batch, length), np.float32)
    first[:, 0] = 1
    for b in range(batch):  # several resets per row, at different times
        first[b, rng.choice(np.arange(1, length), 4, replace=False)] = 1
    return {
        "obs": rng.standard_normal((batch, length, obs_dim), dtype=np.float32),
        "prev_reward": rng.standard_normal((batch, length, 1), dtype=np.float32),
        "is_first": first,
        "noise": rng.standard_normal((batch, length, act_dim), dtype=np.float32) * 0.5,
    }


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_equals_torch_step_equals_parallel_forward(paper, batch):
    """500 steps with several resets: onnxruntime == StepwisePolicy == Policy.forward, states included."""
    ckpt, report = paper
    sp = StepwisePolicy.from_checkpoint(ckpt)
    policy = sp.policy
    session = ort_session(report.path)
    length, names = 500, sp.state_names()
    names_out = [o.name for o in session.get_outputs()]
    seq = episode_inputs(batch, length, 17, 6, seed=batch)
    st_torch = sp.initial_state(batch)
    st_onnx = [t.numpy() for t in st_torch]
    torch_out, _onnx_out, checkpoints = [], [], {}
    for t in range(length):
        feed = {k: v[:, t] for k, v in seq.items()}
        with torch.inference_mode():
            out = sp(*(torch.from_numpy(feed[k]) for k in IN), *st_torch)
        got = session.run(None, {**feed, **{state_in(n): s for n, s in zip(names, st_onnx, strict=False)}})
        for name, a, b in zip(names_out, got, out, strict=False):  # every output and every state, every step
            b = b.numpy()
            excess = float(np.max(np.abs(a - b) - 1e-5 * np.abs(b)))
            assert excess <= 1e-5, f"step {t}: {name} differs by {excess + 1e-5:.2e}"
        st_torch, st_onnx = out[3:], got[3:]
        torch_out.append(out)
        if t + 1 in (137, 500):
            checkpoints[t + 1] = [s.clone() for s in st_torch[2:]]
    # the parallel (training) forward over the same sequence, fed the actions the step form chose
    keep = torch.from_numpy(1.0 - seq["is_first"])[..., None]
    obs = torch.from_numpy(seq["obs"])
    squashed = torch.stack([o[4] for o in torch_out], 1)
    prev_obs = torch.cat([torch.zeros(batch, 1, 17), obs[:, :-1]], 1) * keep
    prev_act = torch.cat([torch.zeros(batch, 1, 6), squashed[:, :-1]], 1) * keep
    resets = torch.from_numpy(seq["is_first"]).bool()
    with torch.inference_mode():
        mean, log_std, final = policy(obs, prev_obs, prev_act, None, resets)
        torch.testing.assert_close(torch.stack([o[1] for o in torch_out], 1), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.stack([o[2] for o in torch_out], 1), log_std, rtol=1e-5, atol=1e-5)
        for stop, states in checkpoints.items():  # encoder states mid-sequence and at the end
            _, _, par_state = policy(obs[:, :stop], prev_obs[:, :stop], prev_act[:, :stop], None, resets[:, :stop])
            for a, b in zip(states, par_state, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the action is tanh(mean + std * noise), rescaled to the bounds
    last = torch_out[-1]
    low, high = torch.tensor(sp.action_low), torch.tensor(sp.action_high)
    expect = low + (last[4] + 1) * (high - low) / 2
    torch.testing.assert_close(last[0], expect, rtol=1e-6, atol=1e-6)


def test_small_policies_gru_mlp_reward_input(tmp_path):
    for kind, reward in (("gru", True), ("mlp", False), ("mamba", True)):
        ckpt = make_random_checkpoint(tmp_path / f"{kind}.pt", encoder=kind, reward_as_input=reward, obs_dim=5,
                                      act_dim=2, embed=16, hidden=32, task_id=None,
                                      encoder_kwargs=SMALL_MAMBA if kind == "mamba" else {})
        report = export_onnx(ckpt, check_steps=40)
        meta = read_metadata(report.path)
        assert meta["reward_as_input"] is reward and meta["encoder"] == kind
        assert report.max_abs_error < 1e-5
        expected = {"gru": ["prev_obs", "prev_act", "gru"], "mlp": ["prev_obs", "prev_act"],
                    "mamba": ["prev_obs", "prev_act", "block0.conv", "block0.ssm"]}[kind]
        assert [s["name"] for s in meta["state_layout"]] == expected
    # the reward input matters when the task feeds rewards (and is ignored at is_first)
    sp = StepwisePolicy.from_checkpoint(tmp_path / "gru.pt")
    state = sp.initial_state(1)
    obs = torch.randn(1, 5)
    a1, s1 = sp.step(obs, torch.zeros(1, 1), torch.zeros(1), state)
    a2, _ = sp.step(obs, torch.ones(1, 1), torch.zeros(1), state)
    a3, _ = sp.step(obs, torch.ones(1, 1), torch.ones(1), state)
    assert not torch.allclose(a1, a2) and torch.allclose(a1, a3)


def test_fp16_graph_keeps_state_math_fp32(tmp_path):
    ckpt = make_random_checkpoint(tmp_path / "c.pt", obs_dim=5, act_dim=2, embed=32, hidden=64,
                                  encoder_kwargs={**SMALL_MAMBA, "d_state": 16})
    report = export_onnx(ckpt, fp16=True, check_steps=100)
    assert report.path.name == "c.fp16.onnx" and report.precision == "fp16-matmul"
    assert report.max_abs_error < 3e-2
    model = onnx.shape_inference.infer_shapes(onnx.load(str(report.path)))
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    ops = {}
    for node in model.graph.node:
        ops.setdefault(node.op_type, []).append(node)
    assert all(types[n.input[0]] == f16 for n in ops["Gemm"]), "weight products run in fp16"
    for op in ("Exp", "Softplus", "Where", "Add"):  # dt, exp(dt*A), state update: fp32
        assert all(types.get(n.output[0], f32) == f32 for n in ops.get(op, [])), op
    assert all(v.type.tensor_type.elem_type == f32 for v in list(model.graph.input) + list(model.graph.output))
    # why: in fp16, exp(dt * A) for dt ~ 1e-4 rounds to exactly 1 (the state would never decay)
    assert torch.exp(torch.tensor(-1e-4, dtype=torch.float16)).item() == 1.0
    assert torch.exp(torch.tensor(-1e-4, dtype=torch.float32)).item() < 1.0


def test_to_mixed_fp16_requires_weights():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ExportError, match="no weight matrix"):
        to_mixed_fp16(helper.make_model(g))


def test_export_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    ckpt = make_random_checkpoint(tmp_path / "c.pt", obs_dim=3, act_dim=1, embed=8, hidden=16, encoder="mlp")
    import resel.export.onnx as mod

    monkeypatch.setattr(mod, "parity_error", lambda *a, **k: (0.5, 0.25))
    with pytest.raises(ParityError, match="disagrees"):
        export_onnx(ckpt, out=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_bad_inputs_name_the_problem(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(ValueError, match="not a readable ONNX"):
        read_metadata(junk)
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(g), str(foreign))
    with pytest.raises(ValueError, match="not a RESeL stepwise policy"):
        read_metadata(foreign)
    ckpt = make_random_checkpoint(tmp_path / "c.pt", obs_dim=3, act_dim=1, embed=8, hidden=16, encoder="mlp")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable RESeL checkpoint"):
        export_onnx(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a RESeL checkpoint"):
        export_onnx(other)
