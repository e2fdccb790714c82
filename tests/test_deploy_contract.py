"""The deploy contract: one module defines the policy file; the data path goes one way; one action mapping.

Import rules (read from the source with ``ast``, and checked again at run time in a fresh interpreter):
- one ``resel_deploy`` module reaches the torch side (torch, ``resel_train``, ``resel.export``): the bridge;
- the exporters and the stepwise model import the contract from ``resel_deploy``, and at most the table of
  install hints (``extras``) and the lazy-attribute helper (``lazy``), which import nothing, besides.
"""

import ast
import math
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

from resel_deploy import Controller, contract
from resel_deploy.contract import ActionMapping, BoxMapping, DiscreteMapping, state_in, state_out
from resel_train.stepwise import StepwisePolicy
from resel_train.testing import make_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TORCH_SIDE = ("torch", "resel_train", "resel.export")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count); ``from pkg import x``
    counts as ``pkg.x`` when x is a module of pkg, else as ``pkg``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            package_dir = ROOT / node.module.replace(".", "/")
            for alias in node.names:
                is_module = (package_dir / f"{alias.name}.py").is_file() or (package_dir / alias.name).is_dir()
                names.add(f"{node.module}.{alias.name}" if is_module else node.module)
    return names


def reaches(names: set[str], prefixes: tuple[str, ...]) -> bool:
    return any(n == p or n.startswith(p + ".") for n in names for p in prefixes)


def test_one_deploy_module_reaches_the_torch_side():
    modules = sorted((ROOT / "resel_deploy").glob("*.py"))
    assert len(modules) >= 6  # the package really was read
    reaching = sorted(p.stem for p in modules if reaches(imported_modules(p), TORCH_SIDE))
    assert reaching == ["bridge"]


# the other deploy modules the training side may load: the install hints and the package's lazy-attribute
# helper (neither imports anything of the house)
LEAVES = {"resel_deploy.contract", "resel_deploy.extras", "resel_deploy.lazy"}


@pytest.mark.parametrize("path", ["export/onnx.py", "export/tensorrt.py", "resel_train/stepwise.py"])
def test_the_exporters_and_the_stepwise_model_import_only_the_contract_from_deploy(path):
    used = {n for n in imported_modules(ROOT / path) if reaches({n}, ("resel_deploy",))}
    assert "resel_deploy.contract" in used
    assert used <= LEAVES, used - LEAVES


@pytest.mark.parametrize("leaf", ["contract.py", "extras.py", "lazy.py"])
def test_the_contract_and_the_install_hints_depend_on_nothing_of_the_house(leaf):
    assert not reaches(imported_modules(ROOT / "resel_deploy" / leaf),
                       (*TORCH_SIDE, "resel_deploy", "resel", "onnxruntime", "onnx"))


def test_importing_the_exporters_loads_only_the_contract_of_the_deploy_package():
    code = ("import sys, resel.export.onnx, resel.export.tensorrt, resel_train.stepwise\n"
            "print(sorted(m for m in sys.modules if m.startswith('resel_deploy')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(eval(out.stdout.strip()))  # noqa: S307  (our own print of a list of names)
    assert "resel_deploy.contract" in loaded and loaded <= {"resel_deploy", *LEAVES}, loaded


def test_state_name_literals_live_in_the_contract_only():
    quote = '"'
    literals = (quote + contract.STATE_IN, quote + contract.STATE_OUT)
    found = []
    for folder in ("resel", "resel_train", "resel_deploy", "export", "cli", "tests", "benchmarks", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if any(lit in line for lit in literals):
                    found.append(f"{path.relative_to(ROOT)}:{i}")
    assert len(found) == 1 and found[0].startswith("resel_deploy/contract.py:"), found
    # the wire format itself (what files already exported carry)
    assert (contract.STATE_IN.rstrip("."), contract.STATE_OUT.rstrip(".")) == ("state_in", "state_out")
    assert state_in("gru").endswith(".gru") and state_out("gru") != state_in("gru")


def test_io_spec_follows_the_layout():
    layout = contract.state_layout(3, 2, [("gru", (8,))])
    inputs, outputs = contract.io_spec(3, BoxMapping.for_dims(2), layout)
    assert [i["name"] for i in inputs] == [*contract.INPUT_NAMES, *(state_in(n) for n in ("prev_obs", "prev_act",
                                                                                          "gru"))]
    assert [o["shape"] for o in outputs] == [["batch", 2]] * 3 + [["batch", 3], ["batch", 2], ["batch", 8]]
    _, discrete = contract.io_spec(3, DiscreteMapping(4), contract.state_layout(3, 4, []))
    assert discrete[0] == {"name": "action", "shape": ["batch"], "dtype": "int64"}


# ---- the action mapping -----------------------------------------------------------------------
def test_action_mapping_by_hand():
    m = BoxMapping.from_bounds([-math.inf, -2.0, 0.0], [math.inf, 2.0, 10.0], 3)
    assert m.low == (-1.0, -2.0, 0.0) and m.high == (1.0, 2.0, 10.0)
    np.testing.assert_array_equal(m.to_env(np.array([0.5, 0.5, -1.0], np.float32)),
                                  np.array([0.5, 1.0, 0.0], np.float32))
    assert ActionMapping.from_space(gymnasium.spaces.Discrete(4)).to_env(np.eye(4)[2]) == 2
    with pytest.raises(ValueError, match="act_dim=2 entries"):
        BoxMapping.from_bounds([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 2)
    with pytest.raises(ValueError, match="action_high 0.0 < action_low 1.0"):
        BoxMapping.from_bounds([1.0], [0.0], 1)


def test_infinite_bounds_one_mapping_for_the_checkpoint_the_graph_and_the_controller(tmp_path):
    """A checkpoint that stores infinite bounds (an unbounded Box): every side acts unscaled on that dimension."""
    ckpt = make_random_checkpoint(tmp_path / "c.pt", obs_dim=3, act_dim=2, encoder="gru", embed=8, hidden=16,
                                  action_low=[-math.inf, -2.0], action_high=[math.inf, 2.0], task_id=None)
    stepwise = StepwisePolicy.from_checkpoint(ckpt)
    assert stepwise.action_low == [-1.0, -2.0] and stepwise.action_high == [1.0, 2.0]
    ctrl = Controller.load(ckpt)  # onnxruntime, exported in memory: its metadata bounds must be finite
    assert ctrl.action_low.tolist() == [-1.0, -2.0] and ctrl.action_high.tolist() == [1.0, 2.0]
    state = stepwise.initial_state(1)
    mapping = BoxMapping.from_bounds([-math.inf, -2.0], [math.inf, 2.0], 2)
    rng = np.random.default_rng(0)
    for t in range(10):
        obs = rng.standard_normal(3).astype(np.float32)
        with torch.no_grad():
            out = stepwise(torch.from_numpy(obs)[None], torch.zeros(1, 1), torch.tensor([float(t == 0)]),
                           torch.zeros(1, 2), *state)
        state = out[3:]
        np.testing.assert_array_equal(out[0][0].numpy(), mapping.to_env(state[1][0].numpy()))  # graph == mapping
        np.testing.assert_allclose(ctrl.step(obs), out[0][0].numpy(), atol=1e-5)


def test_the_trainer_maps_an_unbounded_box_like_the_deployed_policy(tmp_path, monkeypatch):
    """The training loop's env action and the controller's agree on an unbounded Box (finite, unscaled)."""
    import resel_train.collector as collector_module
    from resel_train.collector import EpisodeRecorder, PolicyRunner
    from resel_train.config import resolve_config
    from resel_train.trainer import Trainer

    real = collector_module.make_env

    def unbounded(env_id, seed=0, split="train"):
        env = real(env_id, seed=seed, split=split)
        env.action_space = gymnasium.spaces.Box(-np.inf, np.inf, env.action_space.shape, np.float32)
        return env

    monkeypatch.setattr(collector_module, "make_env", unbounded)
    cfg = resolve_config("Pendulum-P", "classic", steps=200, out=str(tmp_path), overrides=[
        "warmup_steps=200", "model.mamba.d_state=4", "model.mamba.d_conv=4", "model.embed=16", "model.hidden=16",
        "model.mamba.dt_rank=2", "replay_capacity=1000", "threads=1"])
    with Trainer(cfg) as trainer:
        actions = trainer.collector.actions
        assert actions == BoxMapping((-1.0,), (1.0,))
        np.testing.assert_array_equal(actions.to_env(np.array([0.75], np.float32)), [0.75])
        ckpt = trainer.save()
    obs = np.asarray(trainer.collector.env.reset(seed=0)[0], np.float32)
    squashed = PolicyRunner(trainer.policy, trainer.device).act(EpisodeRecorder(obs), True, None)
    ctrl = Controller.load(ckpt, backend="torch")
    np.testing.assert_allclose(ctrl.step(obs), actions.to_env(squashed), atol=1e-6)
    assert np.isfinite(actions.to_env(squashed)).all()


def test_a_checkpoint_loads_through_the_exporter_itself(tmp_path):
    """Controller.load(checkpoint) runs export_onnx in memory: the same graph, checks and parity certificate as
    `resel export` writes to a file."""
    from resel.export.onnx import export_onnx

    ckpt = make_random_checkpoint(tmp_path / "c.pt", obs_dim=3, act_dim=2, encoder="mlp", embed=8, hidden=16)
    written = export_onnx(ckpt)
    ctrl = Controller.load(ckpt)
    for key in ("parity_check", "parity_max_abs_error", "state_layout", "inputs", "outputs", "precision"):
        assert ctrl.metadata[key] == written.metadata[key], key
    from_file = Controller.load(written.path)
    obs = np.linspace(-1, 1, 3, dtype=np.float32)
    np.testing.assert_array_equal(ctrl.step(obs), from_file.step(obs))
