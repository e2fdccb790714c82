"""Checkpoints: one file, written atomically, loaded without executing pickled code.

Layout (a plain dict of tensors, numbers, strings, lists and dicts):
    format: "resel-checkpoint", version: int
    model: {obs_dim, act_dim, reward_as_input, encoder, encoder_kwargs, embed, hidden,
            action_low, action_high, task_id, discrete}  -- everything needed to rebuild the policy
    policy: state_dict                               -- what deployment needs
    config, critic, critic_target, optimizers, log_alpha, counters, rng, replay  -- training only
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resel_train.atomic import atomic_write
from resel_train.nets.policy import Policy

FORMAT = "resel-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable RESeL checkpoint of a supported version."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file, fsync, rename): a crash never leaves half a checkpoint."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` (no code runs) and check that it is ours and of a known version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding pickled objects
        raise CheckpointError(
            f"{path} is not a readable RESeL checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "it may be truncated or written by another tool - use a checkpoint saved by `resel train`"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a RESeL checkpoint (no '{FORMAT}' marker); use one saved by `resel train`")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {data.get('version')}, this toolkit reads version {VERSION}; "
            "use the toolkit version that wrote it"
        )
    return data


def policy_from_checkpoint(data: dict[str, Any]) -> Policy:
    """Rebuild the policy network described by ``data['model']`` and load its weights."""
    spec = data["model"]
    policy = Policy(
        spec["obs_dim"], spec["act_dim"], spec["reward_as_input"], spec["encoder"], spec["encoder_kwargs"],
        spec["embed"], spec["hidden"], spec.get("discrete", False),
    )
    policy.load_state_dict(data["policy"])
    return policy
