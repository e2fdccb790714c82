"""Task registry and task families: real environments, short rollouts (whole file well under a minute)."""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings

import gymnasium as gym
import numpy as np
import pytest

from resel_train.envs import FAMILIES, TaskInfo, list_tasks, make_env, task_info
from resel_train.envs import key_to_door as k2d
from resel_train.envs.mujoco_tasks import gravity_pool

HAVE_MUJOCO = importlib.util.find_spec("mujoco") is not None
HAVE_BULLET = all(importlib.util.find_spec(m) is not None for m in ("pybullet", "pybullet_envs_gymnasium"))

MUJOCO = ["HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid"]
BULLET = ["Hopper", "Walker", "Ant", "HalfCheetah"]
EXPECTED_IDS = (
    MUJOCO
    + [f"{r}-gravity" for r in MUJOCO]
    + [f"{r}BLT{s}" for r in BULLET for s in ("", "-P", "-V")]
    + ["AntDir", "CheetahDir", "HalfCheetahVel", "Wind"]
    + [f"KeyToDoor-{n}" for n in (60, 120, 250, 500)]
    + [f"{n}{s}" for n in ("Pendulum", "CartPole") for s in ("", "-P", "-V")]
)


def _skip_reason(info: TaskInfo) -> str | None:
    needs_mujoco = info.family in ("mujoco", "gravity") or info.id in (
        "AntDir",
        "CheetahDir",
        "HalfCheetahVel",
    )
    if needs_mujoco and not HAVE_MUJOCO:
        return "mujoco is not installed (pip install 'resel[sim]')"
    if info.family == "pybullet" and not HAVE_BULLET:
        return "pybullet / pybullet-envs-gymnasium not installed (pip install 'resel[sim]')"
    return None


def _params(ids: list[str]) -> list:
    out = []
    for tid in ids:
        reason = _skip_reason(task_info(tid))
        out.append(pytest.param(tid, marks=pytest.mark.skipif(reason is not None, reason=reason or "")))
    return out


@pytest.fixture
def envs():
    """Collects envs made in a test and closes them (PyBullet keeps a physics client per env)."""
    made: list[gym.Env] = []

    def make(*args, **kwargs) -> gym.Env:
        env = make_env(*args, **kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def _time_limit(env: gym.Env) -> int | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return env._max_episode_steps
        env = env.env
    return None


def _run(env: gym.Env, seed: int, n: int = 5):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [obs]
    for _ in range(n):
        obs, *_ = env.step(env.action_space.sample())
        out.append(obs)
    return out


# --- registry -------------------------------------------------------------------------------------


def test_registry_lists_exactly_the_paper_tasks():
    infos = list_tasks()
    assert [t.id for t in infos] == EXPECTED_IDS
    for t in infos:
        assert t.family in FAMILIES
        assert t.reward_as_input == (t.family == "meta")
        assert t.discrete == (t.family == "keydoor")
        assert task_info(t.id) is t and t.description
    assert task_info("KeyToDoor-250").max_episode_steps == 15 + 250 + 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        infos[0].id = "x"  # type: ignore[misc]


def test_unknown_id_suggests_close_matches():
    with pytest.raises(ValueError) as err:
        make_env("Hoper")
    msg = str(err.value)
    assert "'Hoper'" in msg and "Did you mean" in msg and "Hopper" in msg and "resel envs" in msg
    with pytest.raises(ValueError, match="HalfCheetahBLT-P"):
        task_info("halfcheetahblt-p")
    with pytest.raises(ValueError, match="resel envs"):
        make_env("NoSuchTaskAtAll")
    with pytest.raises(ValueError, match="split"):
        make_env("Wind", split="validation")


def test_missing_simulator_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pybullet" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'resel\[sim\]'"):
        make_env("HopperBLT-P")


# --- every task -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", _params(EXPECTED_IDS))
def test_every_task_runs_float32_and_is_seeded(task_id, envs):
    info = task_info(task_id)
    env = envs(task_id, seed=3)
    assert isinstance(env.observation_space, gym.spaces.Box)
    assert env.observation_space.dtype == np.float32
    assert isinstance(env.action_space, gym.spaces.Discrete) == info.discrete
    limit = _time_limit(env) or env.unwrapped.episode_steps
    assert limit == info.max_episode_steps

    first, _ = env.reset()  # first reset uses make_env's seed
    env.action_space.seed(3)
    actions = [env.action_space.sample() for _ in range(5)]
    obs_a = [first]
    for a in actions:
        obs, reward, _, truncated, _ = env.step(a)
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        assert env.observation_space.contains(obs), obs
        assert np.isscalar(reward) and not truncated
        obs_a.append(obs)

    other = envs(task_id)  # same seed given to reset instead: identical trajectory
    obs_b = [other.reset(seed=3)[0]] + [other.step(a)[0] for a in actions]
    np.testing.assert_array_equal(np.stack(obs_a), np.stack(obs_b))


# --- observation subsets (POMDP -P / -V) --------------------------------------------------------------


# Written out from SPEC section 3, not imported, so a typo in the package cannot pass silently.
BULLET_INDICES = {
    "Hopper": {"P": (0, 1, 2, 6, 7, 8, 10, 12, 14), "V": (3, 4, 5, 9, 11, 13)},
    "Walker": {"P": (0, 1, 2, 6, 7, 8, 10, 12, 14, 16, 18, 20, 21), "V": (3, 4, 5, 9, 11, 13, 15, 17, 19)},
    "Ant": {
        "P": (0, 1, 2, 6, 7, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25, 26, 27),
        "V": (3, 4, 5, 9, 11, 13, 15, 17, 19, 21, 23),
    },
    "HalfCheetah": {
        "P": (0, 1, 2, 6, 7, 8, 10, 12, 14, 16, 18, 20, 21, 22, 23, 24, 25),
        "V": (3, 4, 5, 9, 11, 13, 15, 17, 19),
    },
}
POMDP_CASES = [(f"{r}BLT", BULLET_INDICES[r]) for r in BULLET] + [
    ("Pendulum", {"P": (0, 1), "V": (2,)}),
    ("CartPole", {"P": (0, 2), "V": (1, 3)}),
]


@pytest.mark.parametrize(
    "full_id,indices", [pytest.param(f, i, marks=_params([f])[0].marks, id=f) for f, i in POMDP_CASES]
)
def test_pomdp_variants_keep_the_listed_indices(full_id, indices, envs):
    full = _run(envs(full_id), seed=11)
    size = full[0].shape[0]
    assert sorted(indices["P"] + indices["V"]) == sorted(set(indices["P"] + indices["V"]))
    assert max(indices["P"] + indices["V"]) < size
    for kind in ("P", "V"):
        part = _run(envs(f"{full_id}-{kind}"), seed=11)
        np.testing.assert_array_equal(np.stack(part), np.stack(full)[:, list(indices[kind])])


# --- gravity --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_MUJOCO, reason="mujoco is not installed (pip install 'resel[sim]')")
def test_gravity_pool_fixed_split_and_range(envs):
    a, b = envs("Hopper-gravity", seed=0), envs("Hopper-gravity", seed=123)
    assert a.pool.train == b.pool.train and a.pool.test == b.pool.test
    assert len(a.pool.train) == 40 and len(a.pool.test) == 20
    assert not set(a.pool.train) & set(a.pool.test)
    for robot, limit in (("Hopper", 3), ("Humanoid", 2)):
        pool = gravity_pool(robot)
        assert pool.shape == (60,) and np.all(pool >= 1.5**-limit) and np.all(pool <= 1.5**limit)
        assert pool.min() < 0.8 and pool.max() > 1.25  # really spread, not a constant

    scales = []
    for _ in range(6):
        _, info = a.reset()
        scale = a.gravity_scale
        assert info["gravity_scale"] == scale and scale in a.pool.train
        assert a.unwrapped.model.opt.gravity[2] == pytest.approx(-9.81 * scale)
        assert a.unwrapped.model.opt.gravity[:2].tolist() == [0.0, 0.0]
        *_, info = a.step(a.action_space.sample())
        assert info["gravity_scale"] == scale
        scales.append(scale)
    assert len(set(scales)) > 1  # a new task at (almost) every reset


@pytest.mark.skipif(not HAVE_MUJOCO, reason="mujoco is not installed (pip install 'resel[sim]')")
def test_gravity_test_split_cycles_the_20_test_tasks(envs):
    env = envs("Walker2d-gravity", seed=5, split="test")
    seen = [env.reset()[1]["gravity_scale"] for _ in range(21)]  # seeded once (5), then unseeded
    assert seen[:20] == env.pool.test[5:] + env.pool.test[:5] and seen[20] == seen[0]
    assert not set(seen) & set(env.pool.train)
    # seeded episodes base, base + 1, ...: the same tasks in the same order at every evaluation
    evaluations = [[env.reset(seed=10_000 + i)[1]["gravity_scale"] for i in range(5)] for _ in range(2)]
    assert evaluations[0] == evaluations[1] == env.pool.test[0:5]  # 10_000 % 20 == 0


@pytest.mark.skipif(not HAVE_MUJOCO, reason="mujoco is not installed (pip install 'resel[sim]')")
def test_gravity_is_hidden_but_changes_dynamics_and_truncates_at_1000(envs):
    plain, grav = envs("HalfCheetah", seed=2), envs("HalfCheetah-gravity", seed=2)
    o_plain, _ = plain.reset()
    o_grav, _ = grav.reset()
    assert abs(grav.gravity_scale - 1.0) > 0.05
    np.testing.assert_array_equal(o_plain, o_grav)  # same start state, gravity not in the observation
    zero = np.zeros(plain.action_space.shape, dtype=np.float32)
    for _ in range(20):
        o_plain, *_ = plain.step(zero)
        o_grav, *_ = grav.step(zero)
    assert not np.allclose(o_plain, o_grav)

    for t in range(1, 1001):  # noqa: B007  (t is the truncation step after the loop)
        _, _, terminated, truncated, _ = grav.step(grav.action_space.sample())
        assert not terminated
        if truncated:
            break
    assert truncated and t == 1000 - 20


# --- meta-RL --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_MUJOCO, reason="mujoco is not installed (pip install 'resel[sim]')")
def test_cheetah_vel_holds_task_for_two_inner_episodes(envs):
    env = envs("HalfCheetahVel", seed=4)
    obs, info = env.reset()
    task = info["task"]
    assert 0.0 <= task <= 3.0 and task in env.pool.train and obs[-1] == 0.0
    for t in range(1, 401):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["task"] == task and not terminated
        expected = -abs(info["x_velocity"] - task) - 0.05 * float(
            np.sum(np.square(action.astype(np.float64)))
        )
        assert reward == pytest.approx(expected, abs=1e-9)
        assert obs[-1] == (1.0 if t in (200, 400) else 0.0)
        assert truncated == (t == 400)
        if t == 200:
            # the robot is back at its start state (reset noise only), the task is unchanged
            assert "final_inner_observation" in info and info["final_inner_observation"][-1] == 1.0
            assert abs(env.unwrapped.data.qpos[0]) < 0.2 and np.abs(obs[:-1]).max() < 0.5
        else:
            assert "final_inner_observation" not in info
    tasks = {env.reset()[1]["task"] for _ in range(5)}
    assert len(tasks) > 1 and tasks <= set(env.pool.train)

    test_env = envs("HalfCheetahVel", seed=4, split="test")  # the first reset is seeded 4: the walk starts there
    assert [test_env.reset()[1]["task"] for _ in range(20)] == test_env.pool.test[4:] + test_env.pool.test[:4]
    assert not set(test_env.pool.test) & set(test_env.pool.train)


@pytest.mark.skipif(not HAVE_MUJOCO, reason="mujoco is not installed (pip install 'resel[sim]')")
@pytest.mark.parametrize("task_id", ["CheetahDir", "AntDir"])
def test_direction_tasks_hide_the_direction_in_the_reward(task_id, envs):
    env = envs(task_id, seed=0)
    directions = set()
    for _ in range(6):
        _, info = env.reset()
        d = info["task"]
        directions.add(d)
        for _ in range(3):
            _, reward, terminated, _, info = env.step(env.action_space.sample())
            extra = info["reward_ctrl"] + info.get("reward_contact", 0.0) + info.get("reward_survive", 0.0)
            assert reward == pytest.approx(d * info["x_velocity"] + extra)
            assert not terminated
    assert directions == {1.0, -1.0}


def test_wind_sparse_goal_reward(envs):
    env = envs("Wind", seed=0)
    obs, info = env.reset()
    wind = info["task"]
    assert np.all(np.abs(wind) <= 0.08) and np.array_equal(obs, np.zeros(2, np.float32))
    inner = env.unwrapped
    zero = np.zeros(2, dtype=np.float32)
    _, reward, *_ = env.step(zero)
    assert reward == 0.0
    for offset, expected in (
        ((0.0, 0.0), 1.0),
        ((0.02, 0.02), 1.0),
        ((0.0, 0.029), 1.0),
        ((0.0, 0.031), 0.0),
        ((0.03, 0.01), 0.0),
    ):
        inner.position = np.array([0.0, 1.0]) - wind + np.array(offset)
        obs, reward, *_ = env.step(zero)
        assert reward == expected, (offset, obs)
        np.testing.assert_allclose(obs, np.array([0.0, 1.0]) + offset, atol=1e-6)
    inner.position = np.zeros(2)
    obs, *_ = env.step(np.array([1.0, -1.0], dtype=np.float32))  # clipped to +-0.1
    np.testing.assert_allclose(obs, np.array([0.1, -0.1]) + wind, atol=1e-6)
    steps = 7
    while True:
        _, _, terminated, truncated, _ = env.step(zero)
        steps += 1
        assert not terminated
        if truncated:
            break
    assert steps == 75


# --- Key-to-Door ------------------------------------------------------------------------------------------


def _walk_to(env: gym.Env, target) -> float:
    """Step towards ``target`` (row first); returns the reward of the last step."""
    inner = env.unwrapped
    reward = 0.0
    while tuple(inner.pos) != tuple(target):
        dr, dc = np.subtract(target, inner.pos)
        action = (0 if dr < 0 else 1) if dr != 0 else (2 if dc < 0 else 3)
        _, reward, *_ = env.step(action)
    return reward


def _finish_phase(env: gym.Env, end: int) -> None:
    inner = env.unwrapped
    while inner.t < end:
        env.step(int(inner.t % 2))  # up / down: harmless shuffling


@pytest.mark.parametrize("with_key", [True, False])
def test_key_to_door_reward_needs_the_key(with_key, envs):
    n = 60
    env = envs(f"KeyToDoor-{n}", seed=1 if with_key else 2)
    obs, _ = env.reset()
    inner = env.unwrapped
    assert obs.shape == (75,) and obs.min() >= 0.0 and obs.max() <= 1.0
    assert np.array_equal(obs.reshape(5, 5, 3)[2, 2], [0.0, 0.0, 1.0])  # egocentric: agent in the centre
    key = tuple(np.argwhere(inner.grid == k2d.KEY)[0])
    if with_key:
        assert _walk_to(env, key) == 0.0
        assert inner.has_key
    else:
        inner.grid[key] = k2d.EMPTY  # the key vanishes: it can never be picked up
    _finish_phase(env, 15)
    assert inner.phase == 1 and inner.has_key == with_key

    apple = tuple(np.argwhere(inner.grid == k2d.APPLE)[0])
    assert _walk_to(env, apple) == 1.0  # apple reward
    while inner.t < 15 + n:  # random walk through the distractor: a step pays 1 exactly when it lands on an apple
        apples = {tuple(cell) for cell in np.argwhere(inner.grid == k2d.APPLE).tolist()}
        action = int(env.action_space.sample())
        lands_on = tuple(np.clip(inner.pos + k2d.MOVES[action], 0, k2d.ROOM - 1).tolist())
        _, r, *_ = env.step(action)
        assert r == (k2d.APPLE_REWARD if lands_on in apples else 0.0)
    assert inner.phase == 2 and inner.grid[k2d.DOOR_CELL] == k2d.DOOR

    assert _walk_to(env, k2d.DOOR_CELL) == (5.0 if with_key else 0.0)
    terminated = truncated = False
    while not (terminated or truncated):
        _, r, terminated, truncated, _ = env.step(int(env.action_space.sample()))
        assert r == 0.0  # the door pays once
    assert terminated and not truncated and inner.t == 15 + n + 10


def test_key_to_door_episode_lengths(envs):
    for n in (60, 120):
        env = envs(f"KeyToDoor-{n}", seed=0)
        env.reset()
        steps, done = 0, False
        while not done:
            obs, _, terminated, truncated, _ = env.step(int(env.action_space.sample()))
            steps += 1
            assert obs.shape == (75,) and 0.0 <= obs.min() and obs.max() <= 1.0
            assert not truncated
            done = terminated
        assert steps == 15 + n + 10


# --- classic ---------------------------------------------------------------------------------------------


def test_continuous_cartpole(envs):
    env = envs("CartPole", seed=0)
    obs, _ = env.reset()
    assert env.action_space.shape == (1,) and env.action_space.low[0] == -1.0
    pushed, *_ = env.step(np.array([1.0], dtype=np.float32))
    assert pushed[1] > obs[1]  # positive action pushes the cart right
    steps, terminated = 1, False
    while not terminated:
        _, reward, terminated, truncated, _ = env.step(np.array([1.0], dtype=np.float32))
        steps += 1
        assert reward == 1.0 and not truncated
    assert steps < 100  # constant full push topples the pole


def test_pendulum_truncates_at_200(envs):
    env = envs("Pendulum-V", seed=0)
    env.reset()
    for t in range(1, 201):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated and truncated == (t == 200)


@pytest.mark.parametrize("task_id", [t.id for t in list_tasks()])
def test_every_task_is_registered_with_gymnasium_and_passes_its_checker(task_id):
    """gymnasium.make("resel/<id>-v0", split=..., seed=...) builds the same task, and check_env finds no error."""
    from gymnasium.utils.env_checker import check_env

    from resel_train.envs import gym_id

    env = gym.make(gym_id(task_id), split="test", seed=7)
    assert env.spec.id == f"resel/{task_id}-v0" and env.spec.kwargs["task_id"] == task_id
    ours = make_env(task_id, seed=7, split="test")
    np.testing.assert_array_equal(env.reset()[0], ours.reset()[0])  # same task, same seeding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # advice such as "observation bound is -inf", not errors
        check_env(env.unwrapped, skip_render_check=True)
    env.close()
    ours.close()


@pytest.mark.skipif(importlib.util.find_spec("pybullet") is None, reason="pybullet is not installed")
def test_pybullet_start_up_printing_is_silenced():
    import subprocess
    import sys

    code = ("from resel_train.envs import make_env\n"
            "for task in ('HopperBLT-V', 'WalkerBLT-P'):\n"
            "    make_env(task).reset(seed=0)\n"
            "print('still printing')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "still printing\n" and "argv[0]" not in out.stderr and "build time" not in out.stderr
