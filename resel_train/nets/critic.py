"""The RESeL critic: its own history embedding and context encoder, and an 8-head Q ensemble.

Continuous tasks: each head maps (o_t, a_t, context_t) to one value. Discrete tasks: the action is
not an input of the head; each head outputs Q for every action at once (``q_all``), and the Q of a
stored (one-hot) action is picked out of it, so the target and the policy loss can take exact
expectations over the policy's action distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resel_train.nets.encoders import State, make_encoder
from resel_train.nets.inputs import HistoryEmbedding, xavier_init


class EnsembleLinear(nn.Module):
    """``n`` independent Linear layers applied as one batched matmul: (n, N, in) -> (n, N, out)."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_dim))
        bound = math.sqrt(6.0 / (in_dim + out_dim))  # Xavier-uniform per member
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def forward_shared(self, x: Tensor) -> Tensor:
        """Every member on the same input (N, in) -> (n, N, out): one matmul against the members side by side.

        Cheaper than ``forward`` on an expanded input: the input is read once and its gradient is one
        matmul instead of n products summed.
        """
        n, in_dim, out_dim = self.weight.shape
        out = torch.addmm(self.bias.reshape(n * out_dim), x, self.weight.transpose(0, 1).reshape(in_dim, n * out_dim))
        return out.view(x.shape[0], n, out_dim).transpose(0, 1)


class Critic(nn.Module):
    """Q_k(o_t, a_t, context_t) for k = 1..n_heads, computed together."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        reward_as_input: bool = False,
        encoder: str = "mamba",
        encoder_kwargs: dict | None = None,
        n_heads: int = 8,
        embed: int = 128,
        hidden: int = 256,
        discrete: bool = False,
    ) -> None:
        super().__init__()
        self.n_heads, self.discrete = n_heads, discrete
        self.embedding = HistoryEmbedding(obs_dim, act_dim, reward_as_input, embed)
        self.encoder = make_encoder(encoder, self.embedding.out_dim, embed, hidden, **(encoder_kwargs or {}))
        self.head_obs = nn.Linear(obs_dim, embed)
        self.head_act = None if discrete else nn.Linear(act_dim, embed)
        head_in, head_out = (2 * embed, act_dim) if discrete else (3 * embed, 1)
        self.layers = nn.ModuleList(
            [EnsembleLinear(n_heads, head_in, hidden), EnsembleLinear(n_heads, hidden, hidden),
             EnsembleLinear(n_heads, hidden, head_out)]
        )
        xavier_init(self)

    def context(
        self, obs: Tensor, prev_obs: Tensor, prev_act: Tensor, prev_rew: Tensor | None, resets: Tensor,
        state: State | None = None,
    ) -> Tensor:
        """Context sequence (b, L, embed) for the whole packed batch."""
        return self.encoder(self.embedding(obs, prev_obs, prev_act, prev_rew), resets, state)[0]

    def q(self, obs: Tensor, act: Tensor, context: Tensor) -> Tensor:
        """Q values (..., n_heads) for any leading shape; discrete ``act`` is one-hot (or any weighting)."""
        if self.discrete:
            return (self.q_all(obs, context) * act[..., None, :]).sum(-1)
        return self._heads(torch.cat([self.head_obs(obs), self.head_act(act), context], dim=-1)).squeeze(-1)

    def q_all(self, obs: Tensor, context: Tensor) -> Tensor:
        """Discrete tasks: Q of every action, (..., n_heads, n_actions)."""
        return self._heads(torch.cat([self.head_obs(obs), context], dim=-1))

    def _heads(self, x: Tensor) -> Tensor:
        """The ensemble MLPs on (..., in) -> (..., n_heads, out)."""
        lead = x.shape[:-1]
        first, *middle, last = self.layers
        x = F.elu(first.forward_shared(x.reshape(-1, x.shape[-1])))
        for layer in middle:
            x = F.elu(layer(x))
        if last.weight.shape[-1] == 1:  # one value per member: a dot product, cheaper than a (N, hidden) x (hidden, 1) bmm
            x = (x * last.weight.transpose(1, 2)).sum(-1, keepdim=True) + last.bias
        else:
            x = last(x)
        return x.transpose(0, 1).reshape(*lead, self.n_heads, x.shape[-1])
