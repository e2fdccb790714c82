"""Pre-encoders and weight init shared by the policy and the critic."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class HistoryEmbedding(nn.Module):
    """One ``Linear(in, embed)`` per input (o_t, o_{t-1}, a_{t-1}[, r_{t-1}]), no activation, concatenated: what the
    context encoder reads.

    Over a packed batch the encoder folds these projections into its first layer
    (:func:`~resel_train.ops.fold.fold_projections`), so it is given the raw inputs (:meth:`raw`) and
    :attr:`projections`; the one-step form, at a handful of rows, reads the concatenated embeddings
    (``forward``), where the fold's own products would cost more than they save and an exported graph
    keeps every weight a constant.
    """

    def __init__(self, obs_dim: int, act_dim: int, reward_as_input: bool, embed: int = 128) -> None:
        super().__init__()
        self.reward_as_input = reward_as_input
        self.obs = nn.Linear(obs_dim, embed)
        self.prev_obs = nn.Linear(obs_dim, embed)
        self.prev_act = nn.Linear(act_dim, embed)
        self.prev_rew = nn.Linear(1, embed) if reward_as_input else None
        self.out_dim = embed * (4 if reward_as_input else 3)

    @property
    def projections(self) -> list[nn.Linear]:
        """The per-input projections in the order of :meth:`raw`'s columns and of the embedding's blocks."""
        return [self.obs, self.prev_obs, self.prev_act] + ([self.prev_rew] if self.prev_rew is not None else [])

    def raw(self, obs: Tensor, prev_obs: Tensor, prev_act: Tensor, prev_rew: Tensor | None) -> Tensor:
        """The inputs side by side, (..., obs_dim * 2 + act_dim [+ 1]): what :attr:`projections` embed."""
        return torch.cat([obs, prev_obs, prev_act] + ([prev_rew] if self.prev_rew is not None else []), dim=-1)

    def forward(self, obs: Tensor, prev_obs: Tensor, prev_act: Tensor, prev_rew: Tensor | None) -> Tensor:
        """The embeddings concatenated, (..., out_dim): the one-step form's input (nothing folded)."""
        return torch.cat([p(x) for p, x in zip(self.projections, (obs, prev_obs, prev_act, prev_rew))], dim=-1)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases on every Linear, except Mamba's dt_proj (own init)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and not name.endswith("dt_proj"):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
