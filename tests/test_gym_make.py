"""``import resel`` (or ``import resel_train``) alone registers every task with Gymnasium.

Checked in a fresh interpreter, one task per family, against ``make_env`` built the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resel_train.envs import FAMILIES, list_tasks

ROOT = Path(__file__).resolve().parents[1]
ONE_PER_FAMILY = {family: next(t.id for t in list_tasks() if t.family == family) for family in FAMILIES}

SCRIPT = """
import json, sys
import {module}
import gymnasium as gym
import numpy as np
assert "resel_train.envs.registry" in sys.modules
ids = sorted(i for i in gym.registry if i.startswith("resel/"))
out = {{"ids": ids, "torch": "torch" in sys.modules, "obs": {{}}}}
for task in {tasks!r}:
    env = gym.make(f"resel/{{task}}-v0", split="test")
    obs, _ = env.reset(seed=3)
    out["obs"][task] = np.asarray(obs, dtype=float).ravel().tolist()
    env.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize("module", ["resel", "resel_train"])
def test_import_registers_every_task_and_make_works_for_each_family(module):
    tasks = sorted(ONE_PER_FAMILY.values())
    code = SCRIPT.format(module=module, tasks=tasks)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ids"] == sorted(f"resel/{t.id}-v0" for t in list_tasks())
    assert out["torch"] is False  # registering stays torch-free
    from resel_train.envs import make_env

    for task in tasks:  # the same env as the library's own factory, same split and seed
        expected, _ = make_env(task, split="test").reset(seed=3)
        assert out["obs"][task] == pytest.approx(list(map(float, expected.ravel())), abs=1e-6), task
