"""The RESeL update: REDQ-flavoured SAC over packed trajectory batches (SPEC §2).

One call to :meth:`RESeL.update` is one critic step (and, every ``policy_delay`` steps, one
policy and alpha step). Every network runs once over the packed rows; the next-step view used
by the target is the same rows shifted by one slot (see ``buffer.Batch``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from resel_train.buffer import Batch, next_view
from resel_train.config import AlgoConfig, ModelConfig
from resel_train.nets.critic import Critic
from resel_train.nets.policy import Policy, sample_squashed


def parameter_groups(net: nn.Module, lr_other: float, lr_encoder: float) -> list[dict]:
    """Two AdamW groups: the context encoder at LR_CE, everything else at LR_other."""
    encoder_ids = {id(p) for p in net.encoder.parameters()}
    other = [p for p in net.parameters() if id(p) not in encoder_ids]
    return [
        {"name": "context_encoder", "params": list(net.encoder.parameters()), "lr": lr_encoder},
        {"name": "other", "params": other, "lr": lr_other},
    ]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


class RESeL(nn.Module):
    """Policy, critic ensemble, target critic, temperature and their optimisers."""

    def __init__(
        self, obs_dim: int, act_dim: int, reward_as_input: bool, model: ModelConfig, algo: AlgoConfig,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.algo = algo
        kw = dict(encoder=model.encoder, encoder_kwargs=model.encoder_kwargs(), embed=model.embed, hidden=model.hidden)
        self.policy = Policy(obs_dim, act_dim, reward_as_input, **kw)
        self.critic = Critic(obs_dim, act_dim, reward_as_input, n_heads=model.n_critics, **kw)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.target_entropy = -float(act_dim) if algo.target_entropy is None else float(algo.target_entropy)
        opt = dict(weight_decay=0.0)
        self.policy_opt = torch.optim.AdamW(parameter_groups(self.policy, algo.policy_lr, algo.encoder_lr), **opt)
        self.critic_opt = torch.optim.AdamW(parameter_groups(self.critic, algo.critic_lr, algo.encoder_lr), **opt)
        self.alpha_opt = torch.optim.AdamW([self.log_alpha], lr=algo.alpha_lr, **opt)
        self.generator = torch.Generator().manual_seed(seed)  # action noise and head pairs: resumable
        self.critic_steps = 0

    @property
    def alpha(self) -> Tensor:
        if self.algo.fixed_alpha is not None:
            return torch.tensor(self.algo.fixed_alpha, device=self.log_alpha.device)
        return self.log_alpha.exp().detach()

    def _history(self, batch: Batch) -> tuple:
        return batch.obs, batch.prev_obs, batch.prev_act, batch.prev_rew if self.policy.reward_as_input else None

    def _sample(self, mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
        gen = self.generator if mean.device.type == "cpu" else None
        return sample_squashed(mean, log_std, gen)

    def critic_target_value(self, batch: Batch, policy_out: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """y_t = r_t + gamma * (1 - terminal_t) * (min of a random pair of target heads - alpha log pi) at t+1.

        ``policy_out`` (mean, log_std over the batch) is reused when the caller already ran the policy.
        """
        with torch.no_grad():
            history = self._history(batch)
            if policy_out is None:
                policy_out = self.policy(*history, batch.reset)[:2]
            mean, log_std = (x.detach() for x in policy_out)
            next_act, next_logp = self._sample(next_view(mean), next_view(log_std))
            context = next_view(self.critic_target.context(*history, batch.reset))
            q_next = self.critic_target.q(next_view(batch.obs), next_act, context)
            pair = torch.randperm(q_next.shape[-1], generator=self.generator)[:2].to(q_next.device)
            soft_value = q_next[..., pair].min(-1, keepdim=True).values - self.alpha * next_logp
            return batch.rew + self.algo.gamma * (1.0 - batch.terminated) * soft_value

    def update(self, batch: Batch) -> dict[str, float]:
        history = self._history(batch)
        policy_due = (self.critic_steps + 1) % self.algo.policy_delay == 0
        # the policy does not change during the critic step: one forward serves the target and the policy loss
        policy_out = self.policy(*history, batch.reset)[:2] if policy_due else None
        target = self.critic_target_value(batch, policy_out)
        q = self.critic.q(batch.obs, batch.act, self.critic.context(*history, batch.reset))
        critic_loss = masked_mean((q - target).pow(2).sum(-1, keepdim=True), batch.mask)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self._polyak()
        self.critic_steps += 1
        q_mean = masked_mean(q.detach().mean(-1, keepdim=True), batch.mask)
        metrics = {"critic_loss": critic_loss.item(), "q_mean": q_mean.item()}
        if policy_out is not None:
            metrics.update(self._policy_and_alpha_step(batch, policy_out))
        return metrics

    def _policy_and_alpha_step(self, batch: Batch, policy_out: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
        history = self._history(batch)
        with torch.no_grad():
            context = self.critic.context(*history, batch.reset)
        mean, log_std = self.policy(*history, batch.reset)[:2] if policy_out is None else policy_out
        act, logp = self._sample(mean, log_std)
        self.critic.requires_grad_(False)  # gradients reach the action, not the critic's parameters
        q = self.critic.q(batch.obs, act, context).mean(-1, keepdim=True)
        self.critic.requires_grad_(True)
        policy_loss = masked_mean(self.alpha * logp - q, batch.mask)
        self.policy_opt.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.policy_opt.step()
        metrics = {"policy_loss": policy_loss.item(), "entropy": -masked_mean(logp.detach(), batch.mask).item()}
        if self.algo.fixed_alpha is None:
            alpha_loss = -masked_mean(self.log_alpha * (logp.detach() + self.target_entropy), batch.mask)
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
            with torch.no_grad():
                self.log_alpha.clamp_(max=self.algo.max_log_alpha)
        metrics["alpha"] = float(self.alpha)
        return metrics

    @torch.no_grad()
    def _polyak(self) -> None:
        target = list(self.critic_target.parameters())
        torch._foreach_lerp_(target, list(self.critic.parameters()), self.algo.tau)

    def training_state(self) -> dict:
        """Everything but the networks needed to resume exactly."""
        return {
            "policy_opt": self.policy_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(), "generator": self.generator.get_state(),
            "critic_steps": self.critic_steps,
        }

    def load_training_state(self, state: dict) -> None:
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.generator.set_state(state["generator"])
        self.critic_steps = int(state["critic_steps"])
