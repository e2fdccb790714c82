"""The agent's action space, chosen once at construction: a :class:`Box` or a :class:`Discrete` space.

A space owns everything that differs between the two, so the networks, the update and the stepwise policy share
every other line:

- the policy head: its width and how its output reads (a tanh-squashed Gaussian's mean and log-std, or a
  categorical's logits and log-probs);
- the critic head: Q(o, a) from an action input, or Q of every action at once with the stored (one-hot) action
  picking its value out;
- the update's action noise, and SAC's soft value and policy objective: a reparameterised sample, or the exact
  expectation over the actions under the categorical probabilities; the entropy target's default;
- the step's decode (head and noise -> env action and the policy's action as the replay stores it), the
  exploration noise and the warm-up's random action.

Bounds and env units come from the deploy contract's torch-free action mapping
(:class:`resel_deploy.contract.ActionMapping`), which each space holds, so the training loop, the exported graph
and every deploy backend act alike.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resel_deploy.contract import ActionMapping, BoxMapping, DiscreteMapping

HeadPair = tuple[Tensor, Tensor]  # the policy head's output: (mean, log_std) or (logits, log_probs)
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class Critic(Protocol):
    """What a space uses of the critic ensemble (:class:`resel_train.nets.critic.Critic`, which is built from a
    space: the networks depend on the space, never the other way round)."""

    head_obs: nn.Module
    head_act: nn.Module | None

    def ensemble(self, x: Tensor, heads: Tensor | None = None) -> Tensor:
        """The ensemble MLPs on the heads' input (..., in) -> (..., members, out)."""

    def q(self, obs: Tensor, act: Tensor, context: Tensor, heads: Tensor | None = None) -> Tensor:
        """Q of ``act`` per head."""

    def q_all(self, obs: Tensor, context: Tensor, heads: Tensor | None = None) -> Tensor:
        """Q of every action per head (discrete)."""


def sample_squashed(mean: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterised tanh-Gaussian sample and its log-prob (summed over action dims, keepdim).

    ``noise`` is standard-normal of ``mean``'s shape, drawn by the caller (on the host, so a run's
    random stream is the same on every device).
    """
    std = log_std.exp()
    pre_tanh = mean + std * noise
    gaussian = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    correction = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    log_prob = (gaussian - correction).sum(-1, keepdim=True)
    return torch.tanh(pre_tanh), log_prob


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel noise -log(-log U): argmax(logits + noise) is an exact categorical sample."""
    return -torch.log(-torch.log(torch.rand(shape, generator=generator)))


def categorical_action(logits: Tensor, gumbel: Tensor) -> Tensor:
    """The action index argmax(logits + gumbel) (int64, ``logits`` without its last axis); zero noise: greedy."""
    return (logits + gumbel).argmax(-1)


class ActionSpace(nn.Module, ABC):
    """What a Box and a Discrete space do differently (see the module docstring).

    A module only for its device constants (non-persistent buffers: no checkpoint holds them): ``act_scale`` and
    ``act_offset``, the mapping's half-range and midpoint, and whatever the space's decode needs besides.
    """

    def __init__(self, mapping: ActionMapping) -> None:
        super().__init__()
        self.mapping = mapping
        self.act_dim = mapping.act_dim
        self.register_buffer("act_scale", torch.tensor(mapping.scale), persistent=False)
        self.register_buffer("act_offset", torch.tensor(mapping.offset), persistent=False)

    @property
    def discrete(self) -> bool:
        """Whether this is a Discrete space (the checkpoint's and the metadata's ``discrete`` key)."""
        return self.mapping.discrete

    @abstractmethod
    def bounded(self, low: Sequence[float] | None, high: Sequence[float] | None) -> ActionSpace:
        """The same space acting within ``low`` .. ``high`` (what the stepwise policy decodes into)."""

    # ---- networks ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def policy_out_dim(self) -> int:
        """Width of the policy head's last layer."""

    @abstractmethod
    def policy_head(self, out: Tensor) -> HeadPair:
        """The head's pair, each (..., act_dim), from the last layer's output."""

    @abstractmethod
    def critic_action_embedding(self, embed: int) -> nn.Linear | None:
        """The critic head's projection of the action input, or None where the action is not an input."""

    @abstractmethod
    def critic_head_dims(self, embed: int) -> tuple[int, int]:
        """(input, output) width of each critic head's MLP."""

    @abstractmethod
    def critic_q(self, critic: Critic, obs: Tensor, act: Tensor, context: Tensor, heads: Tensor | None) -> Tensor:
        """Q of the stored action ``act`` (replay form), (..., n_heads or len(heads))."""

    # ---- the update -------------------------------------------------------------------------------
    @abstractmethod
    def update_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor | None:
        """One action-noise draw of an update (rows, L, act_dim) from the host generator, or None if none is used."""

    @abstractmethod
    def soft_value(self, critic: Critic, dist: HeadPair, obs: Tensor, context: Tensor, noise: Tensor | None,
                   head_pair: Tensor, alpha: Tensor) -> Tensor:
        """The target's soft value of the next step, (..., 1): min over the head pair of Q - alpha log pi."""

    @abstractmethod
    def policy_terms(self, critic: Critic, dist: HeadPair, obs: Tensor, context: Tensor, noise: Tensor | None,
                     alpha: Tensor) -> HeadPair:
        """(the policy objective alpha log pi - mean over heads of Q, the entropy estimate), each (..., 1)."""

    @property
    def default_target_entropy(self) -> float:
        """The entropy target when the config gives none: -act_dim (Discrete tasks fix alpha instead)."""
        return -float(self.act_dim)

    # ---- acting -----------------------------------------------------------------------------------
    @abstractmethod
    def decode(self, head_a: Tensor, head_b: Tensor, noise: Tensor) -> HeadPair:
        """(env action, the policy's action as the replay and the step's ``prev_act`` hold it) for (b, .) rows;
        ``noise`` zero gives the deterministic action. Written for export (no in-place writes)."""

    @abstractmethod
    def exploration_noise(self, batch: int, generator: torch.Generator | None) -> Tensor:
        """The noise of ``batch`` sampled steps (batch, act_dim), drawn on the CPU ``generator``."""

    @abstractmethod
    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random action in replay form (float32): the warm-up's."""


class Box(ActionSpace):
    """A Box of ``act_dim`` dimensions: a tanh-squashed Gaussian policy, Q(o, a) critics, actions in env units
    ``squashed * scale + offset`` within ``low`` .. ``high`` (infinite or missing bounds: [-1, 1])."""

    def __init__(self, act_dim: int, low: Sequence[float] | None = None, high: Sequence[float] | None = None) -> None:
        super().__init__(BoxMapping.from_bounds(low, high, act_dim))

    def bounded(self, low: Sequence[float] | None, high: Sequence[float] | None) -> Box:
        """A Box of the same size within the new bounds."""
        return Box(self.act_dim, low, high)

    @property
    def policy_out_dim(self) -> int:
        """2 * act_dim: log-std and mean."""
        return 2 * self.act_dim

    def policy_head(self, out: Tensor) -> HeadPair:
        """(mean, log_std clamped to [LOG_STD_MIN, LOG_STD_MAX])."""
        log_std, mean = out.chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def critic_action_embedding(self, embed: int) -> nn.Linear:
        """Linear(act_dim, embed): the action is a head input."""
        return nn.Linear(self.act_dim, embed)

    def critic_head_dims(self, embed: int) -> tuple[int, int]:
        """(obs, action and context embeddings, one value)."""
        return 3 * embed, 1

    def critic_q(self, critic: Critic, obs: Tensor, act: Tensor, context: Tensor, heads: Tensor | None) -> Tensor:
        """The heads on (o, a, context)."""
        return critic.ensemble(obs, act, context, heads).squeeze(-1)

    def update_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Standard-normal noise for a reparameterised action."""
        return torch.randn(shape, generator=generator)

    def soft_value(self, critic: Critic, dist: HeadPair, obs: Tensor, context: Tensor, noise: Tensor | None,
                   head_pair: Tensor, alpha: Tensor) -> Tensor:
        """min over the head pair of Q(o, a') - alpha log pi(a'), a' a reparameterised tanh-Gaussian sample."""
        act, logp = sample_squashed(*dist, noise)
        q = critic.q(obs, act, context, heads=head_pair)  # only the pair's heads are computed
        return q.amin(-1, keepdim=True) - alpha * logp

    def policy_terms(self, critic: Critic, dist: HeadPair, obs: Tensor, context: Tensor, noise: Tensor | None,
                     alpha: Tensor) -> HeadPair:
        """(alpha log pi(a) - mean over heads of Q(o, a), -log pi(a)) for a reparameterised sample a."""
        act, logp = sample_squashed(*dist, noise)
        q = critic.q(obs, act, context).mean(-1, keepdim=True)
        return alpha * logp - q, -logp

    def decode(self, head_a: Tensor, head_b: Tensor, noise: Tensor) -> HeadPair:
        """(tanh(mean + exp(log_std) * noise) rescaled to the bounds, the squashed action)."""
        squashed = torch.tanh(head_a + torch.exp(head_b) * noise)
        return squashed * self.act_scale + self.act_offset, squashed

    def exploration_noise(self, batch: int, generator: torch.Generator | None) -> Tensor:
        """Standard-normal noise."""
        return torch.randn((batch, self.act_dim), generator=generator)

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform in [-1, 1] per dimension."""
        return rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)


class Discrete(ActionSpace):
    """A Discrete space of ``n`` actions: a categorical policy, critics giving Q of every action, one-hot actions
    in the replay, the action index in the env."""

    def __init__(self, n: int) -> None:
        super().__init__(DiscreteMapping(n))
        self.register_buffer("action_ids", torch.arange(n), persistent=False)  # the decode's one-hot

    def bounded(self, low: Sequence[float] | None, high: Sequence[float] | None) -> Discrete:
        """The same space: its bounds are always the index range."""
        return Discrete(self.act_dim)

    @property
    def policy_out_dim(self) -> int:
        """n: one logit per action."""
        return self.act_dim

    def policy_head(self, out: Tensor) -> HeadPair:
        """(logits, log-softmax)."""
        return out, torch.log_softmax(out, dim=-1)

    def critic_action_embedding(self, embed: int) -> None:
        """None: each head outputs every action's Q."""
        return None

    def critic_head_dims(self, embed: int) -> tuple[int, int]:
        """(obs and context embeddings, one value per action)."""
        return 2 * embed, self.act_dim

    def critic_q(self, critic: Critic, obs: Tensor, act: Tensor, context: Tensor, heads: Tensor | None) -> Tensor:
        """Every action's Q weighted by the one-hot (or any weighting) ``act``."""
        return (critic.q_all(obs, context, heads) * act[..., None, :]).sum(-1)

    def update_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> None:
        """None: the update takes exact expectations over the actions and draws nothing."""
        return None

    def soft_value(self, critic: Critic, dist: HeadPair, obs: Tensor, context: Tensor, noise: Tensor | None,
                   head_pair: Tensor, alpha: Tensor) -> Tensor:
        """sum_a pi(a) (min over the head pair of Q(o, a) - alpha log pi(a)): the exact expectation."""
        log_probs = dist[1]
        q = critic.q_all(obs, context, heads=head_pair).amin(-2)  # (..., n_actions)
        return (log_probs.exp() * (q - alpha * log_probs)).sum(-1, keepdim=True)

    def policy_terms(self, critic: Critic, dist: HeadPair, obs: Tensor, context: Tensor, noise: Tensor | None,
                     alpha: Tensor) -> HeadPair:
        """(sum_a pi(a) (alpha log pi(a) - mean over heads of Q(o, a)), the entropy)."""
        log_probs = dist[1]
        probs = log_probs.exp()
        q = critic.q_all(obs, context).mean(-2)  # (..., n_actions)
        objective = (probs * (alpha * log_probs - q)).sum(-1, keepdim=True)
        return objective, -(probs * log_probs).sum(-1, keepdim=True)

    def decode(self, head_a: Tensor, head_b: Tensor, noise: Tensor) -> HeadPair:
        """(argmax(logits + noise) as int64, its one-hot): Gumbel noise samples exactly, zeros give the greedy
        action."""
        action = categorical_action(head_a, noise)
        return action, (action[:, None] == self.action_ids).to(head_a.dtype)

    def exploration_noise(self, batch: int, generator: torch.Generator | None) -> Tensor:
        """Standard Gumbel noise."""
        return gumbel_noise((batch, self.act_dim), generator)

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        """The one-hot of a uniformly random index."""
        return self.mapping.encode(rng.integers(self.act_dim))


def space_from_meta(meta: Mapping[str, Any]) -> ActionSpace:
    """The space a checkpoint's model dict or a stepwise policy's metadata describes (``act_dim``, ``discrete``,
    ``action_low`` / ``action_high``): where a stored policy's space is chosen."""
    mapping = ActionMapping.from_meta(meta)
    return Discrete(mapping.act_dim) if mapping.discrete else Box(mapping.act_dim, mapping.low, mapping.high)
