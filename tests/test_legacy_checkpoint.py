"""A run folder written before the trainer was split into components (checkpoint version 2, flat sections)
resumes with today's trainer and continues to the numbers the old trainer gave (see tests/fixtures/README.md)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from resel_train.config import config_from_dict
from resel_train.persist.checkpoint import load_checkpoint, verify_checkpoint
from resel_train.trainer import Trainer

FIXTURES = Path(__file__).parent / "fixtures"
CLOCK_COLUMNS = ("wall_s", "steps_per_s")


def digest(state: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.double().abs().sum()) for k, v in state.items() if v.is_floating_point()}


def rows(text: str) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in CLOCK_COLUMNS} for r in csv.DictReader(io.StringIO(text))]


def resume(run: Path, steps: int) -> Trainer:
    cfg = config_from_dict(load_checkpoint(run / "checkpoint.pt")["config"])
    return Trainer(dataclasses.replace(cfg, steps=steps), run_dir=run, resume=True, requested_keys=["steps"])


def test_a_version_2_run_resumes_and_continues_as_the_old_trainer_did(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "v2_run", run)
    expected = json.loads((FIXTURES / "v2_run_continued.json").read_text())
    assert load_checkpoint(run / "checkpoint.pt")["version"] == 2
    with resume(run, 215) as trainer:
        assert trainer.env_steps == 205
        result = trainer.train(show_progress=False)
    if trainer.device.type != "cpu":
        pytest.skip("the recorded numbers are a CPU run's")
    assert result.keys() == expected["result"].keys()
    for key, value in expected["result"].items():
        assert result[key] == (value if value is None else pytest.approx(value, rel=1e-5, abs=1e-6)), key
    assert trainer.learner.agent.critic_steps == expected["critic_steps"]
    assert float(trainer.learner.agent.log_alpha.detach()) == pytest.approx(expected["log_alpha"], rel=1e-6)
    for name, state in (("policy", trainer.policy.state_dict()), ("critic", trainer.learner.agent.critic.state_dict())):
        assert digest(state) == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name
    got, want = rows((run / "metrics.csv").read_text()), rows(expected["metrics_csv"])
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key] == "") or float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), (a["step"], key)


def test_the_resumed_run_saves_a_version_3_unit_that_resumes_too(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "v2_run", run)
    with resume(run, 210) as trainer:
        trainer.train(show_progress=False)
        state = trainer.state_dict()
    data, verdict = verify_checkpoint(run / "checkpoint.pt")
    assert data["version"] == 3 and data["counters"]["env_steps"] == 210 and "all" in verdict
    assert {"model", "config", "policy", "counters", "learner", "collector", "trainer"} <= data.keys()
    assert sorted(p.name for p in run.glob("replay*.pt")) == ["replay-0000000210.pt"]
    with resume(run, 210) as again:
        restored = again.state_dict()
    saved, loaded = state["collector"], restored["collector"]
    keys = ("env_steps", "episodes", "rng")
    assert {k: saved[k] for k in keys} == {k: loaded[k] for k in keys}
    assert torch.equal(saved["generator"], loaded["generator"])
    for name, tensor in state["learner"]["critic"].items():
        assert torch.equal(tensor, restored["learner"]["critic"][name]), name
