"""Pre-encoders and weight init shared by the policy and the critic."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class HistoryEmbedding(nn.Module):
    """One ``Linear(in, embed)`` per input (o_t, o_{t-1}, a_{t-1}[, r_{t-1}]), no activation, concatenated."""

    def __init__(self, obs_dim: int, act_dim: int, reward_as_input: bool, embed: int = 128) -> None:
        super().__init__()
        self.reward_as_input = reward_as_input
        self.obs = nn.Linear(obs_dim, embed)
        self.prev_obs = nn.Linear(obs_dim, embed)
        self.prev_act = nn.Linear(act_dim, embed)
        self.prev_rew = nn.Linear(1, embed) if reward_as_input else None
        self.out_dim = embed * (4 if reward_as_input else 3)

    def forward(self, obs: Tensor, prev_obs: Tensor, prev_act: Tensor, prev_rew: Tensor | None) -> Tensor:
        """The per-input projections, concatenated: (..., out_dim)."""
        parts = [self.obs(obs), self.prev_obs(prev_obs), self.prev_act(prev_act)]
        if self.prev_rew is not None:
            parts.append(self.prev_rew(prev_rew))
        return torch.cat(parts, dim=-1)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases on every Linear, except Mamba's dt_proj (own init)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and not name.endswith("dt_proj"):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
