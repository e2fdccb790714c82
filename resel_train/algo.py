"""The RESeL update: REDQ-flavoured SAC over packed trajectory batches.

One call to :meth:`RESeL.update` is one critic step (and, when the noise carries a policy draw,
one policy and alpha step). Every network runs once over the packed rows; the next-step view used
by the target is the same rows shifted by one slot (see ``buffer.Batch``).

All randomness of an update (the target's next-action noise, the policy loss's action noise and
the random pair of target heads) is drawn on the host by :meth:`RESeL.draw_noise` from one CPU
generator and travels with the batch as an :class:`UpdateNoise`. The update itself is then a pure
function of (parameters, batch, noise): the same on every device, reproducible and resumable, and
free of host synchronisation, so it can be captured once and replayed as a CUDA graph
(``resel_train.graphed_update``). Metrics are returned as 0-d tensors on the training device and
read only when they are logged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from resel_train.action_space import ActionSpace, Box, Discrete
from resel_train.buffer import Batch, next_view, pad_rows_time
from resel_train.config import AlgoConfig, ModelConfig
from resel_train.flat_params import ParamGroups, fit_optimizer_state
from resel_train.nets.critic import Critic
from resel_train.nets.policy import Policy

CRITIC_METRICS = ("critic_loss", "q_mean", "critic_grad_norm")
POLICY_METRICS = ("policy_loss", "entropy", "policy_grad_norm", "alpha")


def parameter_groups(net: nn.Module, lr_other: float, lr_encoder: float) -> list[dict]:
    """Two AdamW groups: the context encoder at LR_CE, everything else at LR_other."""
    encoder_ids = {id(p) for p in net.encoder.parameters()}
    other = [p for p in net.parameters() if id(p) not in encoder_ids]
    return [
        {"name": "context_encoder", "params": list(net.encoder.parameters()), "lr": lr_encoder},
        {"name": "other", "params": other, "lr": lr_other},
    ]


def mean_weights(mask: Tensor) -> Tensor:
    """``mask`` divided by the number of transition slots: the weights of :func:`masked_mean` (one count per batch)."""
    return mask / mask.sum().clamp(min=1.0)


def masked_mean(x: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``x`` over the transition slots, so padding never counts in a loss; ``weights`` from :func:`mean_weights`."""
    return (x * weights).sum()


def make_adamw(groups: list[dict] | list[Tensor], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with one fused kernel per step where the device has one; capturable on CUDA (graph replay)."""
    cuda = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, fused=True, capturable=cuda)


@dataclass
class UpdateNoise:
    """The random draws of one update, made on the host (see the module docstring).

    ``head_pair``: (2,) int64, the target heads whose minimum is the bootstrap value;
    ``target``: standard-normal noise (rows, L, act_dim) for the next action in the critic target;
    ``policy``: the same for the action of the policy loss, or None on critic-only steps;
    ``policy_step``: whether this update also steps the policy (and alpha). The action space draws the
    action noise: Discrete-action updates take exact expectations over the actions, so they carry
    none at all (``target`` and ``policy`` None), only the head pair and this flag.
    """

    head_pair: Tensor
    target: Tensor | None = None
    policy: Tensor | None = None
    policy_step: bool = False

    def __post_init__(self) -> None:
        self.policy_step = self.policy_step or self.policy is not None

    def _map(self, fn) -> UpdateNoise:
        return UpdateNoise(**{f.name: fn(v) if isinstance(v := getattr(self, f.name), Tensor) else v
                              for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> UpdateNoise:
        """The same draws on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> UpdateNoise:
        """A copy in page-locked host memory (an asynchronous copy to a GPU needs it)."""
        return self._map(lambda t: t.pin_memory())

    def padded(self, rows: int, length: int) -> UpdateNoise:
        """Zero-padded to (rows, length) along the batch and time axes (matching ``Batch.padded``)."""
        pad = lambda t: None if t is None else pad_rows_time(t, rows, length)  # noqa: E731
        return UpdateNoise(head_pair=self.head_pair, target=pad(self.target), policy=pad(self.policy),
                           policy_step=self.policy_step)


class RESeL(nn.Module):
    """Policy, critic ensemble, target critic, temperature and their optimisers."""

    def __init__(
        self, obs_dim: int, act_dim: int, reward_as_input: bool, model: ModelConfig, algo: AlgoConfig,
        seed: int = 0, device: torch.device | str = "cpu", discrete: bool = False,
    ) -> None:
        """``discrete``: ``act_dim`` actions of a Discrete space (one-hot in the batches), else a Box of act_dim;
        the one choice of the action space (:mod:`resel_train.action_space`), which the networks and the update
        then follow."""
        super().__init__()
        self.algo, self.act_dim = algo, act_dim
        self.space: ActionSpace = Discrete(act_dim) if discrete else Box(act_dim)
        device = torch.device(device)
        kw = dict(encoder=model.encoder, encoder_kwargs=model.encoder_kwargs(), embed=model.embed, hidden=model.hidden)
        self.policy = Policy(obs_dim, self.space, reward_as_input, **kw)
        self.critic = Critic(obs_dim, self.space, reward_as_input, n_heads=model.n_critics, **kw)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.to(device)
        self.target_entropy = (self.space.default_target_entropy if algo.target_entropy is None
                               else float(algo.target_entropy))
        self._fixed_alpha = None if algo.fixed_alpha is None else torch.tensor(float(algo.fixed_alpha), device=device)
        flat = device.type == "cpu"  # see resel_train.flat_params
        self.policy_params = ParamGroups(parameter_groups(self.policy, algo.policy_lr, algo.encoder_lr), flat)
        self.critic_params = ParamGroups(parameter_groups(self.critic, algo.critic_lr, algo.encoder_lr), flat)
        # the critic's split, so the target's tensors line up with the critic's for the Polyak step (no LR used)
        self.target_params = ParamGroups(parameter_groups(self.critic_target, 0.0, 0.0), flat, grads=False)
        self.policy_opt = make_adamw(self.policy_params.groups, algo.policy_lr, device)
        self.critic_opt = make_adamw(self.critic_params.groups, algo.critic_lr, device)
        self.alpha_opt = make_adamw([self.log_alpha], algo.alpha_lr, device)
        self.generator = torch.Generator().manual_seed(seed)  # CPU: update noise and head pairs, resumable
        self.critic_steps = 0

    @property
    def alpha(self) -> Tensor:
        """The entropy temperature: exp(log_alpha), or the fixed value when ``algo.fixed_alpha`` is set."""
        return self._fixed_alpha if self._fixed_alpha is not None else self.log_alpha.exp().detach()

    def _history(self, batch: Batch) -> tuple:
        return batch.obs, batch.prev_obs, batch.prev_act, batch.prev_rew if self.policy.reward_as_input else None

    # ---- randomness (host side) ------------------------------------------------------------------
    def draw_noise(self, rows: int, length: int) -> UpdateNoise:
        """The next update's random draws, on the CPU; a policy step on every ``policy_delay``-th step."""
        shape = (rows, length, self.act_dim)
        target = self.space.update_noise(shape, self.generator)
        head_pair = torch.randperm(self.critic.n_heads, generator=self.generator)[:2]
        policy_due = (self.critic_steps + 1) % self.algo.policy_delay == 0
        policy = self.space.update_noise(shape, self.generator) if policy_due else None
        return UpdateNoise(head_pair=head_pair, target=target, policy=policy, policy_step=policy_due)

    # ---- the update (device side, no host synchronisation) ---------------------------------------
    def critic_target_value(self, batch: Batch, noise: UpdateNoise, policy_out: tuple[Tensor, Tensor] | None = None
                            ) -> Tensor:
        """y_t = r_t + gamma * (1 - terminal_t) * (min of a random pair of target heads - alpha log pi) at t+1.

        Discrete tasks take the expectation of that soft value over the next action's distribution.
        ``policy_out`` (the policy head's pair over the batch) is reused when the caller already ran the policy.
        """
        with torch.no_grad():
            history = self._history(batch)
            if policy_out is None:
                policy_out = self.policy(*history, batch.reset)[:2]
            dist = tuple(next_view(x.detach()) for x in policy_out)
            context = next_view(self.critic_target.context(*history, batch.reset))
            soft_value = self.space.soft_value(self.critic_target, dist, next_view(batch.obs), context, noise.target,
                                          noise.head_pair, self.alpha)
            return batch.rew + self.algo.gamma * (1.0 - batch.terminated) * soft_value

    def update(self, batch: Batch, noise: UpdateNoise) -> dict[str, Tensor]:
        """One critic step (+ policy and alpha step when ``noise.policy_step``); counts the step."""
        metrics = self.compute_update(batch, noise)
        self.critic_steps += 1
        return metrics

    def compute_update(self, batch: Batch, noise: UpdateNoise) -> dict[str, Tensor]:
        """The update's tensor work alone (what a CUDA graph captures): no Python state changes."""
        history = self._history(batch)
        # the policy does not change during the critic step: one forward serves the target and the policy loss
        policy_out = self.policy(*history, batch.reset)[:2] if noise.policy_step else None
        target = self.critic_target_value(batch, noise, policy_out)
        q = self.critic.q(batch.obs, batch.act, self.critic.context(*history, batch.reset))
        weights = mean_weights(batch.mask)
        critic_loss = masked_mean((q - target).pow(2).sum(-1, keepdim=True), weights)
        self.critic_params.zero_grad()
        critic_loss.backward()
        critic_grad_norm = self.critic_params.grad_norm()
        self.critic_opt.step()
        self._polyak()
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": masked_mean(q.detach().mean(-1, keepdim=True), weights),
                   "critic_grad_norm": critic_grad_norm}
        if policy_out is not None:
            metrics.update(self._policy_and_alpha_step(batch, policy_out, noise.policy))
        return metrics

    def _policy_and_alpha_step(self, batch: Batch, policy_out: tuple[Tensor, Tensor], noise: Tensor | None
                               ) -> dict[str, Tensor]:
        history, weights = self._history(batch), mean_weights(batch.mask)
        with torch.no_grad():
            context = self.critic.context(*history, batch.reset)
        self.critic.requires_grad_(False)  # gradients reach the action (or its probabilities), not the critic
        objective, entropy = self.space.policy_terms(self.critic, policy_out, batch.obs, context, noise, self.alpha)
        self.critic.requires_grad_(True)
        policy_loss = masked_mean(objective, weights)
        self.policy_params.zero_grad()
        policy_loss.backward()
        policy_grad_norm = self.policy_params.grad_norm()
        self.policy_opt.step()
        entropy = entropy.detach()
        metrics = {"policy_loss": policy_loss.detach(), "entropy": masked_mean(entropy, weights),
                   "policy_grad_norm": policy_grad_norm}
        if self._fixed_alpha is None:
            alpha_loss = masked_mean(self.log_alpha * (entropy - self.target_entropy), weights)
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
            with torch.no_grad():
                self.log_alpha.clamp_(max=self.algo.max_log_alpha)
        metrics["alpha"] = self.alpha.clone()
        return metrics

    @torch.no_grad()
    def _polyak(self) -> None:
        torch._foreach_lerp_(self.target_params.tensors, self.critic_params.tensors, self.algo.tau)

    def training_state(self) -> dict:
        """Everything but the networks needed to resume exactly."""
        return {
            "policy_opt": self.policy_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(), "generator": self.generator.get_state(),
            "critic_steps": self.critic_steps,
        }

    def load_training_state(self, state: dict) -> None:
        """Restore what :meth:`training_state` saved (optimisers, generator, step count), on this device."""
        self.policy_opt.load_state_dict(fit_optimizer_state(state["policy_opt"], self.policy_opt, self.policy_params))
        self.critic_opt.load_state_dict(fit_optimizer_state(state["critic_opt"], self.critic_opt, self.critic_params))
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        for opt in (self.policy_opt, self.critic_opt, self.alpha_opt):  # a run may resume on another device
            for group in opt.param_groups:
                group["capturable"] = self.log_alpha.device.type == "cuda"
        self.generator.set_state(state["generator"])
        self.critic_steps = int(state["critic_steps"])

