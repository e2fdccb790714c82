"""The RESeL policy: history embedding -> context encoder -> tanh-squashed Gaussian or categorical head.

Box tasks get a Gaussian head (mean, log_std); Discrete ones (Key-to-Door) a categorical head over
``act_dim`` actions that outputs (logits, log_probs). The action space (``resel_train.action_space``)
sizes the head and reads its output; either pair is what the update and the deployment step consume,
so both action spaces share every other line of the network; the distributions' sampling math lives
with the spaces.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resel_train.action_space import ActionSpace
from resel_train.nets.encoders import State, make_encoder
from resel_train.nets.inputs import HistoryEmbedding, xavier_init
from resel_train.ops.activations import ELU


class Policy(nn.Module):
    """pi(a_t | o_t, context_t); the context summarises (o, o_prev, a_prev[, r_prev]) up to t."""

    def __init__(
        self,
        obs_dim: int,
        space: ActionSpace,
        reward_as_input: bool = False,
        encoder: str = "mamba",
        encoder_kwargs: dict | None = None,
        embed: int = 128,
        hidden: int = 256,
    ) -> None:
        """``space``: the action space (a Box's or a Discrete's head)."""
        super().__init__()
        act_dim = space.act_dim
        self.obs_dim, self.act_dim, self.reward_as_input = obs_dim, act_dim, reward_as_input
        self.embedding = HistoryEmbedding(obs_dim, act_dim, reward_as_input, embed)
        self.encoder = make_encoder(encoder, self.embedding.out_dim, embed, hidden, **(encoder_kwargs or {}))
        self.head_obs = nn.Linear(obs_dim, embed)
        self.head = nn.Sequential(
            nn.Linear(2 * embed, hidden), ELU(),
            nn.Linear(hidden, hidden), ELU(),
            nn.Linear(hidden, space.policy_out_dim),
        )
        xavier_init(self)
        self.space = space

    def _head(self, obs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of the Gaussian, or (logits, log_probs) of the categorical, each (..., act_dim).

        ``head_obs`` is not folded into the head's first layer as the critic's projections are: at the
        policy's one head the fold's extra small products cost more than the narrower product saves.
        """
        return self.space.policy_head(self.head(torch.cat([self.head_obs(obs), context], dim=-1)))

    def forward(
        self, obs: Tensor, prev_obs: Tensor, prev_act: Tensor, prev_rew: Tensor | None, resets: Tensor,
        state: State | None = None,
    ) -> tuple[Tensor, Tensor, State]:
        """Sequences (b, L, .) -> the head's pair (b, L, act_dim) (see ``_head``) and the final encoder state."""
        embedding = self.embedding
        context, state = self.encoder(embedding.raw(obs, prev_obs, prev_act, prev_rew), resets, state,
                                      embedding.projections)
        mean, log_std = self._head(obs, context)
        return mean, log_std, state

    def step(
        self, obs: Tensor, prev_obs: Tensor, prev_act: Tensor, prev_rew: Tensor | None, reset: Tensor, state: State
    ) -> tuple[Tensor, Tensor, State]:
        """One control step, (b, .) inputs, O(1) in the episode length: the step that
        :class:`~resel_train.stepwise.StepwisePolicy` (collection, ``predict``, export, the torch backend) runs."""
        context, state = self.encoder.step(self.embedding(obs, prev_obs, prev_act, prev_rew), reset, state)
        mean, log_std = self._head(obs, context)
        return mean, log_std, state
