"""The RESeL critic: its own history embedding and context encoder, and an 8-head Q ensemble.

Box tasks: each head maps (o_t, a_t, context_t) to one value. Discrete tasks: the action is
not an input of the head; each head outputs Q for every action at once (``q_all``), and the Q of a
stored (one-hot) action is picked out of it, so the target and the policy loss can take exact
expectations over the policy's action distribution. The action space (``resel_train.action_space``)
sizes the heads and computes the Q of a stored action.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from resel_train.action_space import ActionSpace
from resel_train.nets.encoders import State, make_encoder
from resel_train.nets.inputs import HistoryEmbedding, xavier_init
from resel_train.ops import ensemble_cpu
from resel_train.ops.activations import elu, elu_members
from resel_train.ops.ensemble_cpu import ensemble_heads
from resel_train.ops.fold import fold_projections


class EnsembleLinear(nn.Module):
    """``n`` independent Linear layers: weight (n, in, out), bias (n, 1, out); applied by :func:`ensemble_mlp`."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_dim))
        bound = math.sqrt(6.0 / (in_dim + out_dim))  # Xavier-uniform per member
        nn.init.uniform_(self.weight, -bound, bound)

    def members(self, index: Tensor | None) -> tuple[Tensor, Tensor]:
        """(weight, bias) of all members, or of those in ``index`` (a device tensor: no host sync)."""
        if index is None:
            return self.weight, self.bias
        return self.weight.index_select(0, index), self.bias.index_select(0, index)


def ensemble_mlp(x: Tensor, first: tuple[Tensor, Tensor], layers: list[tuple[Tensor, Tensor]]) -> Tensor:
    """ELU MLPs of m members on one shared input: (N, in) -> (m, N, out).

    ``first``: the first layer's members side by side, weight (in, m * width) and bias (m * width,),
    so it is one matmul (the input is read once and its gradient is one matmul, instead of an
    expanded copy and m products summed); ``layers``: each later layer's (weight, bias) stacked over
    the m members. A one-value last layer is a dot product, cheaper than m (N, hidden) x (hidden, 1)
    matmuls.
    """
    (w_last, b_last), m = layers[-1], layers[-1][0].shape[0]
    middle = layers[:-1]
    h = elu_members(torch.addmm(first[1], x, first[0]), m)
    for w, b in middle:
        h = elu(torch.baddbmm(b, h, w))
    if w_last.shape[-1] == 1:
        return (h * w_last.transpose(1, 2)).sum(-1, keepdim=True) + b_last
    return torch.baddbmm(b_last, h, w_last)


class Critic(nn.Module):
    """Q_k(o_t, a_t, context_t) for k = 1..n_heads, computed together."""

    def __init__(
        self,
        obs_dim: int,
        space: ActionSpace,
        reward_as_input: bool = False,
        encoder: str = "mamba",
        encoder_kwargs: dict | None = None,
        n_heads: int = 8,
        embed: int = 128,
        hidden: int = 256,
    ) -> None:
        """``space``: the action space (whether the action is a head input, and each head's output width)."""
        super().__init__()
        self.n_heads = n_heads
        self.embedding = HistoryEmbedding(obs_dim, space.act_dim, reward_as_input, embed)
        self.encoder = make_encoder(encoder, self.embedding.out_dim, embed, hidden, **(encoder_kwargs or {}))
        self.head_obs = nn.Linear(obs_dim, embed)
        self.head_act = space.critic_action_embedding(embed)
        head_in, head_out = space.critic_head_dims(embed)
        self.layers = nn.ModuleList(
            [EnsembleLinear(n_heads, head_in, hidden), EnsembleLinear(n_heads, hidden, hidden),
             EnsembleLinear(n_heads, hidden, head_out)]
        )
        xavier_init(self)
        self.space = space

    def context(
        self, obs: Tensor, prev_obs: Tensor, prev_act: Tensor, prev_rew: Tensor | None, resets: Tensor,
        state: State | None = None,
    ) -> Tensor:
        """Context sequence (b, L, embed) for the whole packed batch."""
        embedding = self.embedding
        return self.encoder(embedding.raw(obs, prev_obs, prev_act, prev_rew), resets, state, embedding.projections)[0]

    def q(self, obs: Tensor, act: Tensor, context: Tensor, heads: Tensor | None = None) -> Tensor:
        """Q values (..., n_heads), or (..., len(heads)) for the heads in ``heads`` only, of the action ``act`` as
        the replay stores it (a Discrete space's one-hot, or any weighting)."""
        return self.space.critic_q(self, obs, act, context, heads)

    def q_all(self, obs: Tensor, context: Tensor, heads: Tensor | None = None) -> Tensor:
        """Discrete tasks: Q of every action, (..., n_heads or len(heads), n_actions)."""
        return self.ensemble(obs, None, context, heads)

    def ensemble(self, obs: Tensor, act: Tensor | None, context: Tensor, heads: Tensor | None = None) -> Tensor:
        """The ensemble MLPs (all, or the members in ``heads``) on ``cat([head_obs(o), head_act(a), context])``
        (no action part when ``act`` is None): (..., members, out).

        The two input projections are folded into the first layer (:func:`fold_projections`), so that
        layer's products over the batch are as wide as the context plus the raw observation and action.
        On the CPU kernels the whole chain is one autograd node (``resel_train.ops.ensemble_cpu``).
        """
        inputs = [obs, context] if act is None else [obs, act, context]
        projections = [self.head_obs] if act is None else [self.head_obs, self.head_act]
        layers = [layer.members(heads) for layer in self.layers]
        lead = context.shape[:-1]
        if ensemble_cpu.applies(context, projections, len(layers)):  # one node over the CPU kernels
            out = ensemble_heads(inputs, projections, layers)
        else:
            x = torch.cat(inputs, dim=-1)
            x = x.reshape(-1, x.shape[-1])
            (w, b), *rest = layers
            m, in_dim, width = w.shape
            first = fold_projections(w.transpose(0, 1).reshape(in_dim, m * width), b.reshape(m * width),
                                     projections, context.shape[-1])
            out = ensemble_mlp(x, first, rest)
        return out.transpose(0, 1).reshape(*lead, out.shape[0], out.shape[-1])
