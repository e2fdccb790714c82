"""Random-weight checkpoints in the trainer's layout, for tests, benchmarks and the examples (torch side:
the deploy package never imports it).

A freshly initialised policy has all-zero biases and identical norm weights, which would hide
bugs in bias and scale handling, so ``perturb`` adds small noise to every parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resel_deploy.contract import mapping_kind
from resel_train.action_space import space_from_meta
from resel_train.nets.policy import Policy
from resel_train.persist.checkpoint import save_checkpoint

PAPER_MAMBA = {"n_blocks": 1, "d_state": 64, "d_conv": 8, "expand": 2, "dt_rank": 16}
SMALL_MAMBA = {"n_blocks": 1, "d_state": 8, "d_conv": 4, "expand": 2, "dt_rank": 4}


def model_spec(
    obs_dim: int = 17,
    act_dim: int = 6,
    encoder: str = "mamba",
    encoder_kwargs: dict[str, Any] | None = None,
    reward_as_input: bool = False,
    embed: int = 128,
    hidden: int = 256,
    action_low: list[float] | None = None,
    action_high: list[float] | None = None,
    task_id: str | None = "Walker2d",
    discrete: bool = False,
) -> dict[str, Any]:
    """The checkpoint's ``model`` dict (paper-size Mamba policy for Walker2d by default).

    ``discrete``: a categorical policy over ``act_dim`` actions (Key-to-Door); bounds are the index range.
    """
    if encoder_kwargs is None:
        encoder_kwargs = dict(PAPER_MAMBA) if encoder == "mamba" else {}
    actions = mapping_kind(discrete).for_dims(act_dim)  # the space's own bounds where none are given
    return {
        "obs_dim": obs_dim, "act_dim": act_dim, "reward_as_input": reward_as_input, "encoder": encoder,
        "encoder_kwargs": encoder_kwargs, "embed": embed, "hidden": hidden,
        "action_low": action_low if action_low is not None else list(actions.low),
        "action_high": action_high if action_high is not None else list(actions.high),
        "task_id": task_id, "discrete": discrete,
    }


def random_policy(spec: dict[str, Any], seed: int = 0, perturb: float = 0.02) -> Policy:
    """The policy of ``spec`` with seeded weights, each parameter moved by ``perturb`` noise (see the module doc)."""
    torch.manual_seed(seed)
    policy = Policy(spec["obs_dim"], space_from_meta(spec), spec["reward_as_input"], spec["encoder"],
                    spec["encoder_kwargs"], spec["embed"], spec["hidden"])
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn(p.shape, generator=g) * perturb)
    return policy.eval()


def make_random_checkpoint(path: str | Path, seed: int = 0, perturb: float = 0.02, **spec_kwargs) -> Path:
    """Write a checkpoint with ``model`` and ``policy`` keys (what deployment reads) and return its path."""
    spec = model_spec(**spec_kwargs)
    policy = random_policy(spec, seed, perturb)
    save_checkpoint(path, {"model": spec, "policy": policy.state_dict()})
    return Path(path)
