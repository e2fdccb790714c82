"""The Python API under misuse: predict never returns a non-finite action; a second learn/save/export on one model
or run folder while another is in progress, or over a folder someone else advanced, raises RunLocked at once."""

from __future__ import annotations

import csv
import threading
import traceback

import numpy as np
import pytest

from resel import RESeL
from resel_deploy import NonFiniteAction
from resel_train.callbacks import BaseCallback
from resel_train.persist.checkpoint import load_checkpoint
from resel_train.persist.runlock import RunLocked
from tests.test_api import TINY, WARMUP, tiny


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A saved tiny model (loaded back, as a user would predict with it) and the bytes of its checkpoint."""
    tmp = tmp_path_factory.mktemp("misuse")
    path = tiny(tmp, env="Pendulum-V").learn(WARMUP + 2).save(tmp / "p.pt")
    return RESeL.load(path), path


def zero_state(model):
    return model.predict(np.zeros(1), deterministic=True)[1]


def filled(model, value):
    return {k: np.full_like(v, value) for k, v in zero_state(model).items()}


# (name, predict kwargs from the model, exception type, words the message must contain)
PREDICT_CASES = [
    ("NaN state", lambda m: {"state": filled(m, np.nan)}, ValueError, ["state['prev_obs']", "NaN or inf"]),
    ("inf state", lambda m: {"state": filled(m, np.inf)}, ValueError, ["NaN or inf"]),
    ("huge state gives a NaN action", lambda m: {"state": filled(m, 1e30)}, NonFiniteAction,
     ["non-finite action", "row(s) [0]", "safe_action"]),
    ("huge batch row", lambda m: {"observation": np.zeros((2, 1)),
                                  "state": {k: np.stack([np.zeros_like(v[0]), np.full_like(v[0], 1e30)])
                                            for k, v in zero_state(m).items()}}, NonFiniteAction, ["row(s) [1]"]),
    ("safe_action outside the bounds", lambda m: {"state": filled(m, 1e30), "safe_action": [5.0]}, ValueError,
     ["safe_action must be finite and within the action bounds", "[-2.0]"]),
    ("safe_action NaN", lambda m: {"safe_action": np.nan}, ValueError, ["safe_action must be finite"]),
    ("safe_action of the wrong shape", lambda m: {"safe_action": [0.0, 0.0]}, ValueError, ["safe_action must be"]),
    ("safe_action not numeric", lambda m: {"safe_action": "stop"}, TypeError, ["safe_action must be a numeric"]),
]


@pytest.mark.parametrize("name, kwargs, error, words", PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_predict_refuses_what_would_give_a_non_finite_action(loaded, name, kwargs, error, words):
    model, path = loaded
    before = path.read_bytes()
    args = {"observation": np.zeros(1), "deterministic": True, **kwargs(model)}
    copies = {k: v.copy() for k, v in (args.get("state") or {}).items()}
    with pytest.raises(error) as info:
        model.predict(**args)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, (name, message)
    assert path.read_bytes() == before
    for k, v in copies.items():  # the caller's state was not modified
        np.testing.assert_array_equal(args["state"][k], v)


def test_safe_action_replaces_a_non_finite_action_and_restarts_that_row(loaded):
    model, _ = loaded
    state = zero_state(model)
    batch = {k: np.stack([np.zeros_like(v[0]), np.full_like(v[0], 1e30)]) for k, v in state.items()}
    action, new_state = model.predict(np.zeros((2, 1)), batch, deterministic=True, safe_action=0.5)
    ok, _ = model.predict(np.zeros(1), {k: v[:1] for k, v in batch.items()}, deterministic=True)
    assert action[1].tolist() == [0.5] and action[0].tolist() == ok.tolist()
    assert all(np.all(v[1] == 0) for v in new_state.values())  # that row's next call starts an episode
    fresh, _ = model.predict(np.zeros(1), deterministic=True)  # and acts exactly as a new episode does
    again, _ = model.predict(np.zeros(1), {k: v[1:] for k, v in new_state.items()}, deterministic=True)
    assert np.isfinite(again).all() and fresh.shape == again.shape


class Pause(BaseCallback):
    """Holds training at ``at`` steps until the test has tried its concurrent call."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.reached, self.resume = at, threading.Event(), threading.Event()

    def on_step(self) -> bool:
        if self.num_timesteps == self.at:
            self.reached.set()
            assert self.resume.wait(120)
        return True


# (name, the concurrent call (model, its run folder, tmp), words the message must contain)
CONCURRENT = [
    ("learn twice on one model", lambda m, d, t: m.learn(WARMUP + 30), ["busy in learn()", "call learn()"]),
    ("save during learn", lambda m, d, t: m.save(t / "x.pt"), ["busy in learn()", "call save()"]),
    ("export during learn", lambda m, d, t: m.export(t / "x.onnx"), ["busy in learn()", "call export()"]),
    ("a second model on the folder", lambda m, d, t: RESeL("Wind", out=str(t), resume=True, **TINY),
     ["is in use by pid", "Wind_mamba_s0"]),
    ("loading the folder to learn", lambda m, d, t: RESeL.load(d / "checkpoint.pt").learn(WARMUP + 30),
     ["is in use by pid"]),
]


@pytest.mark.parametrize("name, call, words", CONCURRENT, ids=[c[0] for c in CONCURRENT])
def test_concurrent_use_of_one_model_or_run_folder_is_refused_at_once(tmp_path, name, call, words):
    model = tiny(tmp_path)
    model.learn(WARMUP + 5)
    run = model.run_dir
    committed = (run / "checkpoint.pt").read_bytes()
    pause, failures = Pause(WARMUP + 10), []

    def train():
        try:
            model.learn(15, callbacks=[pause])  # on to WARMUP + 20
        except BaseException:  # noqa: BLE001 - reported below
            failures.append(traceback.format_exc())

    thread = threading.Thread(target=train)
    thread.start()
    assert pause.reached.wait(120)
    try:
        with pytest.raises(RunLocked) as info:
            call(model, run, tmp_path)
        assert (run / "checkpoint.pt").read_bytes() == committed  # nothing was written by the refused call
    finally:
        pause.resume.set()
        thread.join()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (name, message)
    assert not failures, failures[0]
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_steps"] == WARMUP + 20
    steps = [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert len(steps) == len(set(steps))  # each step logged once


def test_learning_over_a_folder_another_model_advanced_is_refused(tmp_path):
    first = tiny(tmp_path)
    first.learn(WARMUP + 5)
    second = RESeL("Wind", out=str(tmp_path), resume=True, **TINY)
    second.learn(5)
    committed = (first.run_dir / "checkpoint.pt").read_bytes()
    for stale in (lambda: first.learn(15), lambda: first.save(tmp_path / "stale.pt")):
        with pytest.raises(RunLocked, match=f"changed by another model or process .* at step {WARMUP + 10}, this "
                                            f"model is at step {WARMUP + 5}"):
            stale()
    assert (first.run_dir / "checkpoint.pt").read_bytes() == committed and not (tmp_path / "stale.pt").exists()
    assert second.learn(5).run_timesteps == WARMUP + 15  # the model that owns the folder goes on
