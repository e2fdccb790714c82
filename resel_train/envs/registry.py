"""The table of task ids: what each task is (``TaskInfo``) and how to build it (``make_env``).

Family modules are imported only when one of their tasks is built, so listing tasks never needs
a simulator.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from .common import SIM_INSTALL_HINT, SPLITS, DefaultSeed

FAMILIES = ("mujoco", "gravity", "pybullet", "meta", "keydoor", "classic")


@dataclass(frozen=True)
class TaskInfo:
    """What a trainer needs to know about a task before building it."""

    id: str
    family: str  # one of FAMILIES
    reward_as_input: bool  # meta-RL: the previous reward is a policy input
    discrete: bool  # Discrete action space (Key-to-Door only)
    max_episode_steps: int
    description: str


# id -> (TaskInfo, module (relative to this package), factory name, factory kwargs)
_TABLE: dict[str, tuple[TaskInfo, str, str, dict[str, Any]]] = {}


def _add(info: TaskInfo, module: str, factory: str, **kwargs: Any) -> None:
    assert info.family in FAMILIES and info.id not in _TABLE, info
    _TABLE[info.id] = (info, module, factory, kwargs)


def _build_table() -> None:
    for robot in ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid"):
        _add(
            TaskInfo(robot, "mujoco", False, False, 1000, f"MuJoCo {robot}-v5, full state (MDP)"),
            ".mujoco_tasks",
            "make_mdp",
            robot=robot,
        )
    for robot in ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid"):
        limit = 2 if robot == "Humanoid" else 3
        _add(
            TaskInfo(
                f"{robot}-gravity",
                "gravity",
                False,
                False,
                1000,
                f"{robot}-v5 with hidden gravity z scaled by 1.5**U(-{limit},{limit}); 40 train / 20 test",
            ),
            ".mujoco_tasks",
            "make_gravity",
            robot=robot,
        )
    for robot in ("Hopper", "Walker", "Ant", "HalfCheetah"):
        _add(
            TaskInfo(
                f"{robot}BLT",
                "pybullet",
                False,
                False,
                1000,
                f"PyBullet {robot}, full observation (reference for -P/-V)",
            ),
            ".pybullet_tasks",
            "make_bullet",
            robot=robot,
            kind=None,
        )
        for kind, what in (("P", "positions"), ("V", "velocities")):
            _add(
                TaskInfo(
                    f"{robot}BLT-{kind}",
                    "pybullet",
                    False,
                    False,
                    1000,
                    f"PyBullet {robot}, only {what} observed (POMDP)",
                ),
                ".pybullet_tasks",
                "make_bullet",
                robot=robot,
                kind=kind,
            )
    _add(
        TaskInfo(
            "AntDir",
            "meta",
            True,
            False,
            400,
            "Ant-v5, hidden direction +-1 in the reward; 2 x 200 steps per task",
        ),
        ".meta_tasks",
        "make_ant_dir",
    )
    _add(
        TaskInfo(
            "CheetahDir",
            "meta",
            True,
            False,
            400,
            "HalfCheetah-v5, hidden direction +-1 in the reward; 2 x 200 steps per task",
        ),
        ".meta_tasks",
        "make_cheetah_dir",
    )
    _add(
        TaskInfo(
            "HalfCheetahVel",
            "meta",
            True,
            False,
            400,
            "HalfCheetah-v5, hidden target speed U[0,3]; 2 x 200 steps per task; 40 train / 20 test",
        ),
        ".meta_tasks",
        "make_cheetah_vel",
    )
    _add(
        TaskInfo(
            "Wind",
            "meta",
            True,
            False,
            75,
            "2-D point with hidden wind, sparse goal reward; 40 train / 20 test",
        ),
        ".meta_tasks",
        "make_wind",
    )
    for n in (60, 120, 250, 500):
        _add(
            TaskInfo(
                f"KeyToDoor-{n}",
                "keydoor",
                False,
                True,
                15 + n + 10,
                f"Key-to-Door grid world, {n}-step apple distractor phase (credit assignment)",
            ),
            ".key_to_door",
            "make_key_to_door",
            distractor_steps=n,
        )
    for name, steps in (("Pendulum", 200), ("CartPole", 500)):
        factory = f"make_{name.lower()}"
        _add(
            TaskInfo(name, "classic", False, False, steps, f"{name}, full state"),
            ".classic",
            factory,
            kind=None,
        )
        for kind, what in (("P", "positions"), ("V", "velocities")):
            cont = ", continuous force" if name == "CartPole" else ""
            _add(
                TaskInfo(
                    f"{name}-{kind}",
                    "classic",
                    False,
                    False,
                    steps,
                    f"{name}, only {what} observed{cont} (POMDP)",
                ),
                ".classic",
                factory,
                kind=kind,
            )


_build_table()

NAMESPACE, VERSION = "resel", 0


def gym_id(task_id: str) -> str:
    """The id under which ``task_id`` is registered with Gymnasium: ``resel/<task_id>-v0``."""
    return f"{NAMESPACE}/{task_id}-v{VERSION}"


def _register_with_gymnasium() -> None:
    """Register every task with Gymnasium, so ``gymnasium.make("resel/Walker2d-gravity-v0", split="test",
    seed=1)`` works with other libraries, wrappers and vector envs. Our factories add their own time
    limits (so ``max_episode_steps`` stays unset here) and are imported only when a task is built."""
    for task_id in _TABLE:
        if gym_id(task_id) not in gym.registry:
            gym.register(id=gym_id(task_id), entry_point="resel_train.envs.registry:make_env",
                         kwargs={"task_id": task_id})


_register_with_gymnasium()


def list_tasks() -> list[TaskInfo]:
    """Every registered task, in table order (grouped by family)."""
    return [entry[0] for entry in _TABLE.values()]


def _unknown(task_id: str) -> ValueError:
    ids = list(_TABLE)
    by_lower = {i.lower(): i for i in ids}
    matches = difflib.get_close_matches(task_id, ids, n=3, cutoff=0.5)
    if task_id.lower() in by_lower and by_lower[task_id.lower()] not in matches:
        matches.insert(0, by_lower[task_id.lower()])
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    return ValueError(f"Unknown task id '{task_id}'.{hint} Run `resel envs` to list all task ids.")


def task_info(task_id: str) -> TaskInfo:
    """The ``TaskInfo`` of ``task_id``; unknown ids raise ``ValueError`` with close matches."""
    if task_id not in _TABLE:
        raise _unknown(task_id)
    return _TABLE[task_id][0]


def make_env(task_id: str, seed: int | None = None, split: str = "train") -> gym.Env:
    """Build the Gymnasium environment of ``task_id``.

    ``seed`` seeds the action space and is used by the first ``reset()`` that passes no seed.
    ``split="test"`` selects the held-out tasks of task-distribution families (gravity, meta);
    other families ignore it. Observations are float32 Boxes; time limits come out as
    ``truncated=True``.
    """
    if task_id not in _TABLE:
        raise _unknown(task_id)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _, module, factory, kwargs = _TABLE[task_id]
    make = getattr(importlib.import_module(module, __package__), factory)
    try:
        env = make(split=split, **kwargs)
    except gym.error.DependencyNotInstalled as err:
        raise ImportError(
            f"Task '{task_id}' needs a simulator that is not installed ({err}). "
            f"Install it with: {SIM_INSTALL_HINT}"
        ) from err
    return DefaultSeed(env, seed)
