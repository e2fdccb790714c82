"""The sections of a run's checkpoint unit: one per training component, plus what readers outside training use.

In memory a run's state is ``{component: state_dict}`` (``learner``, ``collector``, ``trainer``). On
disk (version 3) ``checkpoint.pt`` holds::

    model, config    -- the policy's description and the resolved config
    policy           -- the learner's policy weights, at the top where deployment reads them
    counters         -- env_steps, episodes, wall_s: a summary for tools that do not train
    learner          -- the rest of the learner's state except its replay
    collector, trainer

and the replay file holds the learner's ``replay``. Versions 1 and 2 kept every piece at the top
level (``critic``, ``counters``, ``rng``, ...); :func:`components` reads them into the same sections.
"""

from __future__ import annotations

from typing import Any


def pack(model: dict, config: dict, state: dict[str, dict]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint payload, replay payload)`` for ``state`` = ``{component: state_dict}``."""
    learner = dict(state["learner"])
    policy, replay = learner.pop("policy"), learner.pop("replay")
    collector, trainer = state["collector"], state["trainer"]
    counters = {"env_steps": collector["env_steps"], "episodes": collector["episodes"], "wall_s": trainer["wall_s"]}
    return ({"model": model, "config": config, "policy": policy, "counters": counters, "learner": learner,
             "collector": collector, "trainer": trainer}, {"replay": replay})


def components(saved: dict[str, Any], replay: dict[str, Any]) -> dict[str, dict]:
    """``{component: state_dict}`` of a loaded checkpoint (any readable version) and its replay file."""
    if saved["version"] >= 3:
        return {"learner": {**saved["learner"], "policy": saved["policy"], "replay": replay["replay"]},
                "collector": saved["collector"], "trainer": saved["trainer"]}
    counters, rng = saved["counters"], saved["rng"]
    return {
        "learner": {**{k: saved[k] for k in ("policy", "critic", "critic_target", "log_alpha", "training")},
                    "replay": replay["replay"]},
        "collector": {"env_steps": counters["env_steps"], "episodes": counters["episodes"], "rng": rng["numpy"],
                      "generator": rng["collect"]},
        "trainer": {"wall_s": counters.get("wall_s", 0.0), "rng": {"torch": rng["torch"], "python": rng["python"]}},
    }


def weight_sections(data: dict[str, Any]) -> dict[str, Any]:
    """``{"policy", "critic", "critic_target", "log_alpha"}`` of a checkpoint of any version (absent ones: None)."""
    learner = data.get("learner") or data
    return {"policy": data.get("policy"), "critic": learner.get("critic"),
            "critic_target": learner.get("critic_target"), "log_alpha": learner.get("log_alpha")}
