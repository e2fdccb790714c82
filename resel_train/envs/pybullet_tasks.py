"""PyBullet locomotion POMDPs (pomdp-baselines): ``-P`` keeps positions, ``-V`` keeps velocities.

The environments come from ``pybullet-envs-gymnasium`` (Gymnasium 1.x port of pybullet_envs);
the index lists are the ones of the RESeL / pomdp-baselines benchmark.
"""

from __future__ import annotations

import gymnasium as gym

from .common import Float32Observation, QuietReset, SelectObservation, require, silenced_c_output

EPISODE_STEPS = 1000

# Our robot name -> the id registered by pybullet_envs_gymnasium.
BULLET_IDS = {
    "Hopper": "HopperBulletEnv-v0",
    "Walker": "Walker2DBulletEnv-v0",
    "Ant": "AntBulletEnv-v0",
    "HalfCheetah": "HalfCheetahBulletEnv-v0",
}

POMDP_INDICES: dict[str, dict[str, tuple[int, ...]]] = {
    "Hopper": {
        "P": (0, 1, 2, 6, 7, 8, 10, 12, 14),
        "V": (3, 4, 5, 9, 11, 13),
    },
    "Walker": {
        "P": (0, 1, 2, 6, 7, 8, 10, 12, 14, 16, 18, 20, 21),
        "V": (3, 4, 5, 9, 11, 13, 15, 17, 19),
    },
    "Ant": {
        "P": (0, 1, 2, 6, 7, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25, 26, 27),
        "V": (3, 4, 5, 9, 11, 13, 15, 17, 19, 21, 23),
    },
    "HalfCheetah": {
        "P": (0, 1, 2, 6, 7, 8, 10, 12, 14, 16, 18, 20, 21, 22, 23, 24, 25),
        "V": (3, 4, 5, 9, 11, 13, 15, 17, 19),
    },
}


def make_bullet(robot: str, kind: str | None = None, split: str = "train") -> gym.Env:
    """``<robot>BLT`` (kind None, full observation) or ``<robot>BLT-<kind>`` with kind in {"P", "V"}."""
    task_id = f"{robot}BLT" + (f"-{kind}" if kind else "")
    require("pybullet", task_id)
    require("pybullet_envs_gymnasium", task_id)
    with silenced_c_output(fds=(1, 2)):
        import pybullet_envs_gymnasium  # noqa: F401  (registers the *BulletEnv-v0 ids)

        env = QuietReset(gym.make(BULLET_IDS[robot], max_episode_steps=EPISODE_STEPS))
    return SelectObservation(env, POMDP_INDICES[robot][kind]) if kind else Float32Observation(env)
