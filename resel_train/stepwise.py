"""The policy as a pure function of (inputs, state) -> (action, new state): one control step, O(1).

``StepwisePolicy`` wraps a trained :class:`resel_train.nets.policy.Policy` so that the caller passes
only what a robot has at step t, and everything remembered from earlier steps travels in an
explicit state tuple (no hidden module state, no in-place writes, so the same module exports to
ONNX / TensorRT unchanged):

    forward(obs, prev_reward, is_first, noise, *state) -> (action, mean, log_std, *new_state)

Inputs (all float32, ``batch`` rows = robots):
    obs          (batch, obs_dim)   current observation o_t
    prev_reward  (batch, 1)         reward received after the previous action, r_{t-1}
                                    (ignored unless the task feeds rewards to the policy)
    is_first     (batch,)           1.0 at the first step of an episode, else 0.0: the previous
                                    obs/action/reward and all encoder memory are treated as zeros
    noise        (batch, act_dim)   standard-normal noise for a stochastic action; zeros give the
                                    deterministic action tanh(mean)
    state        see :meth:`StepwisePolicy.state_spec`; in order
                 prev_obs (batch, obs_dim), prev_act (batch, act_dim) -- the squashed action in [-1, 1]
                 that the policy chose last step -- then the context encoder's tensors
                 (Mamba: per block ``blockI.conv`` (batch, d_inner, d_conv-1) and ``blockI.ssm``
                 (batch, d_inner, d_state); GRU: ``gru`` (batch, hidden); LSTM: ``lstm.h``, ``lstm.c``
                 (batch, hidden); S5: per layer ``layerI.re``, ``layerI.im`` (batch, d_state); MLP: nothing).
Outputs:
    action       (batch, act_dim)   tanh(mean + exp(log_std) * noise) rescaled to [action_low, action_high]
    mean, log_std (batch, act_dim)  the Gaussian head (pre-tanh), for diagnostics and parity checks
    new state    same names, shapes and order as the state inputs

Discrete-action policies (Key-to-Door; ``discrete`` in the metadata) use the same inputs and
state with ``act_dim`` = the number of actions, and output
    action       (batch,) int64         argmax(logits + noise): ``noise`` is standard Gumbel noise for a
                                        sampled action (exact categorical sampling), zeros give the greedy one
    logits, log_probs (batch, act_dim)  the categorical head
and ``prev_act`` is the one-hot of the chosen action. The policy's action space
(:mod:`resel_train.action_space`) decodes either head, with the deploy contract's action mapping
for the bounds and the output names.

A zero state with ``is_first = 0`` and ``prev_reward = 0`` is equivalent to ``is_first = 1``. The
encoder step is the training networks' own ``encoder.step`` (one implementation, written for export:
see ``resel_train.nets.mamba.Mamba.step``); tests check it against the parallel ``Policy.forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resel_deploy import contract
from resel_train.nets.policy import Policy
from resel_train.persist.checkpoint import CheckpointError, load_checkpoint, nonfinite_weights, policy_from_checkpoint


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: its stable name and its shape without the leading batch axis."""

    name: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """The metadata's description of this tensor (see :func:`resel_deploy.contract.state_entry`)."""
        return contract.state_entry(self.name, self.shape)


class StepwisePolicy(nn.Module):
    """One control step of a RESeL policy with explicit state (see the module docstring)."""

    def __init__(
        self,
        policy: Policy,
        action_low: Sequence[float] | None = None,
        action_high: Sequence[float] | None = None,
        meta: dict[str, Any] | None = None,
        live: bool = False,
    ) -> None:
        """``live=True`` wraps a policy that is still being trained (the trainer collects through it):
        its parameters keep their gradients and mode; call it under ``torch.no_grad``. Otherwise
        (export, deployment) the policy is put in eval mode and its parameters frozen."""
        super().__init__()
        self.policy = policy if live else policy.eval()
        self.obs_dim, self.act_dim, self.reward_as_input = policy.obs_dim, policy.act_dim, policy.reward_as_input
        self.meta = dict(meta or {})
        self.space = policy.space.bounded(action_low, action_high)  # the decode, within these bounds
        self.actions = self.space.mapping  # the deploy contract's action mapping
        self.action_low, self.action_high = list(self.actions.low), list(self.actions.high)
        encoder = policy.encoder
        example = encoder.initial_state(1)
        names = encoder.state_names()
        self._encoder_specs = [StateSpec(n, tuple(t.shape[1:])) for n, t in zip(names, example, strict=True)]
        if not live:
            for p in self.parameters():
                p.requires_grad_(False)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path) -> StepwisePolicy:
        """Load a training checkpoint (weights only; no pickled code runs) into a stepwise policy."""
        data = load_checkpoint(path)
        spec = data.get("model")
        if not isinstance(spec, dict) or "policy" not in data:
            raise CheckpointError(f"{path} has no 'model' spec or 'policy' weights; it cannot be deployed")
        bad = nonfinite_weights({"policy": data["policy"]})
        if bad:
            raise CheckpointError(f"{path} holds non-finite policy weights ({', '.join(bad[:3])}): the run "
                                  "diverged before this was saved; it cannot be deployed")
        try:
            policy = policy_from_checkpoint(data)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{path}: policy weights do not match its model spec ({exc})") from exc
        meta = {
            "task_id": spec.get("task_id"),
            "encoder": spec.get("encoder"),
            "encoder_kwargs": spec.get("encoder_kwargs") or {},
            "embed": spec.get("embed"),
            "hidden": spec.get("hidden"),
            "source": str(path),
        }
        return cls(policy, spec.get("action_low"), spec.get("action_high"), meta)

    # ---- state --------------------------------------------------------------------------------
    def state_spec(self) -> list[StateSpec]:
        """Names and per-row shapes of the state tensors, in the order ``forward`` takes them (the contract's layout)."""
        layout = contract.state_layout(self.obs_dim, self.act_dim, [(s.name, s.shape) for s in self._encoder_specs])
        return [StateSpec(n, shape) for n, shape in layout]

    def state_names(self) -> list[str]:
        """The state tensors' names, in order."""
        return [s.name for s in self.state_spec()]

    def io_spec(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The step's graph inputs and outputs: names, shapes and dtypes (see :func:`resel_deploy.contract.io_spec`)."""
        return contract.io_spec(self.obs_dim, self.actions, [(s.name, s.shape) for s in self.state_spec()])

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> tuple[Tensor, ...]:
        """All-zero state for ``batch`` robots (equivalent to starting every episode with is_first = 1)."""
        return tuple(torch.zeros(batch, *s.shape, device=device, dtype=dtype) for s in self.state_spec())

    def metadata(self) -> dict[str, Any]:
        """What a deployed artifact needs to describe itself (dims, bounds, state layout)."""
        return contract.stepwise_metadata(
            self.obs_dim, self.act_dim, self.reward_as_input, self.actions, self.meta.get("task_id"),
            self.meta.get("encoder") or type(self.policy.encoder).__name__,
            [(s.name, s.shape) for s in self.state_spec()])

    # ---- the step -----------------------------------------------------------------------------
    def forward(self, obs: Tensor, prev_reward: Tensor, is_first: Tensor, noise: Tensor, *state: Tensor):
        """One step: (inputs, state) -> (action, head pair, new state); see the module docstring."""
        prev_obs, prev_act, enc_state = state[0], state[1], state[2:]
        keep = (1.0 - is_first)[:, None]  # (b, 1)
        prev_rew = prev_reward * keep if self.reward_as_input else None
        # the training networks' own step (one implementation, also what the sequence form is tested against)
        mean, log_std, new_enc_state = self.policy.step(obs, prev_obs * keep, prev_act * keep, prev_rew, is_first,
                                                        tuple(enc_state))
        action, prev_act = self.space.decode(mean, log_std, noise)  # env units, and the replay's form
        # obs.clone(): the new state must not alias an input buffer the caller will overwrite
        return (action, mean, log_std, obs.clone(), prev_act, *new_enc_state)

    @torch.no_grad()
    def step(
        self,
        obs: Tensor,
        prev_reward: Tensor | None,
        is_first: Tensor,
        state: tuple[Tensor, ...],
        noise: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Convenience form: ``(obs, prev_reward, is_first, state) -> (action in env units, new_state)``.

        ``prev_reward`` may be None (zeros), ``is_first`` may be bool, ``noise`` None (deterministic:
        tanh(mean), or the greedy action of a discrete policy).
        """
        batch = obs.shape[0]
        if prev_reward is None:
            prev_reward = obs.new_zeros(batch, 1)
        prev_reward = prev_reward.reshape(batch, 1).to(obs.dtype)
        if noise is None:
            noise = obs.new_zeros(batch, self.act_dim)
        out = self(obs, prev_reward, is_first.reshape(batch).to(obs.dtype), noise, *state)
        return out[0], tuple(out[3:])

