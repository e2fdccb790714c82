"""Mamba (selective SSM) mixer and the RESeL Mamba block, reset-aware in both forms.

Parameter names follow mamba-ssm's ``Mamba`` module (in_proj, conv1d, x_proj, dt_proj, A_log,
D, out_proj), so a ``state_dict`` trained there loads here unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resel_train.ops import cpu_kernel
from resel_train.ops.conv import causal_conv1d, causal_conv1d_step
from resel_train.ops.mamba_cpu import mixer_scan
from resel_train.ops.norms import rms_norm
from resel_train.ops.scan import selective_scan

MambaState = tuple[Tensor, Tensor]  # (conv window (b, d_inner, d_conv-1), ssm state (b, d_inner, d_state))


class Mamba(nn.Module):
    """The selective-SSM mixer: in_proj -> causal conv -> SiLU -> selective scan -> gate -> out_proj."""

    def __init__(
        self,
        d_model: int = 256,
        d_state: int = 64,
        d_conv: int = 8,
        expand: int = 2,
        dt_rank: int | None = 16,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
        scan_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan_impl = scan_impl
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self._init_dt(dt_min, dt_max, dt_floor)

    def _init_dt(self, dt_min: float, dt_max: float, dt_floor: float) -> None:
        """Mamba's dt init: softplus(bias) log-uniform in [dt_min, dt_max]."""
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> MambaState:
        """Zero state: the conv window (batch, d_inner, d_conv - 1) and the SSM state (batch, d_inner, d_state)."""
        return (
            torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def _split(self, x_dbl: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)

    def on_cpu_kernels(self, x: Tensor) -> bool:
        """Whether the sequence form on ``x`` runs as one node over the CPU kernels (float32 CPU tensors, kernels
        built, the scan left to ``auto`` or set to ``cpu``); else the generic path below runs."""
        return self.scan_impl in ("auto", "cpu") and cpu_kernel.applies_to(x)

    def forward(self, x: Tensor, reset: Tensor | None, state: MambaState | None = None) -> tuple[Tensor, MambaState]:
        """x (b, L, d_model), reset (b, L) -> y (b, L, d_model), final state."""
        conv_state, ssm_state = (None, None) if state is None else state
        weight = self.conv1d.weight.squeeze(1)
        if self.on_cpu_kernels(x):  # one node over the CPU kernels
            y, conv_final, ssm_final = mixer_scan(x, self.in_proj.weight, weight, self.conv1d.bias, self.x_proj.weight,
                                                  self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D,
                                                  self.out_proj.weight, reset, conv_state, ssm_state)
            return y, (conv_final, ssm_final)
        xs, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (b, d_inner, L) each
        xs, conv_final = causal_conv1d(xs, weight, self.conv1d.bias, reset, conv_state)
        xs = F.silu(xs)
        dt, B, C = self._split(self.x_proj(xs.transpose(1, 2)))
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        y, ssm_final = selective_scan(
            xs, delta, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2), self.D.float(),
            z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True, reset=reset,
            initial_state=ssm_state, return_last_state=True, impl=self.scan_impl,
        )
        return self.out_proj(y.transpose(1, 2)), (conv_final, ssm_final)

    def step(self, x: Tensor, reset: Tensor | None, state: MambaState) -> tuple[Tensor, MambaState]:
        """One step, O(1) in the episode length: x (b, d_model) -> y (b, d_model), new state.

        The one step of the toolkit: training-time collection, evaluation and the exported ONNX /
        TensorRT graph all run it, so it is written for export: new tensors only (exporters drop
        in-place writes to inputs), matrix-product contractions, and a reset applied by sending dt to
        +inf in the decay alone, so exp(dt * A) is exactly 0 at a reset (A < 0) without another pass
        over the (b, d_inner, d_state) state. ``-exp(A_log)`` depends on weights only, so ONNX
        runtimes fold it into a constant.
        """
        conv_state, ssm_state = state
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs, conv_state = causal_conv1d_step(xs, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, reset)
        xs = F.silu(xs)
        dt, B, C = self._split(self.x_proj(xs))
        dt = F.softplus(self.dt_proj(dt))  # (b, d_inner)
        A = -torch.exp(self.A_log.float()).clamp(min=1e-30)  # strictly < 0, so inf * A = -inf, never NaN
        dt_decay = dt if reset is None else torch.where(reset.to(torch.bool)[:, None], torch.inf, dt)
        decay = torch.exp(dt_decay[:, :, None] * A)  # (b, d_inner, d_state)
        ssm_state = decay * ssm_state + torch.matmul((dt * xs)[:, :, None], B[:, None, :])
        y = torch.matmul(ssm_state, C[:, :, None]).squeeze(-1) + self.D * xs
        y = y * F.silu(z)
        return self.out_proj(y), (conv_state, ssm_state)


def rms_norm_step(x: Tensor, norm: nn.RMSNorm, eps: Tensor) -> Tensor:
    """``norm(x)`` written as x / sqrt(mean(x^2) + eps) * w, the pattern onnxruntime fuses into one op.

    ``eps`` is a (1,)-shaped tensor on purpose: the exporter's optimiser treats a scalar 1e-8 as
    zero and deletes the ``+ eps`` (a zero input would then give 0/0 = NaN, and the fusion would not match).
    """
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight


def gelu_exact(x: Tensor) -> Tensor:
    """Exact (erf) GELU, ``F.gelu``'s default, in the operand order onnxruntime fuses into one Gelu op."""
    return (x * (1.0 + torch.erf(x / math.sqrt(2.0)))) * 0.5


class MambaBlock(nn.Module):
    """RESeL's block: h = x + Mamba(RMSNorm(x)); out = LayerNorm(h + W2 GELU(W1 h))."""

    def __init__(self, d_model: int = 256, **mamba_kwargs) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-8)
        self.mixer = Mamba(d_model, **mamba_kwargs)
        self.ff_in = nn.Linear(d_model, d_model)
        self.ff_out = nn.Linear(d_model, d_model)
        self.ff_norm = nn.LayerNorm(d_model)
        self.register_buffer("norm_eps", torch.full((1,), self.norm.eps), persistent=False)

    def _feed_forward(self, h: Tensor) -> Tensor:
        return self.ff_norm(h + self.ff_out(F.gelu(self.ff_in(h))))

    def forward(self, x: Tensor, reset: Tensor | None, state: MambaState | None = None) -> tuple[Tensor, MambaState]:
        """x (b, L, d_model) -> the block's output and the mixer's final state."""
        y, state = self.mixer(rms_norm(x, self.norm, self.norm_eps), reset, state)
        return self._feed_forward(x + y), state

    def step(self, x: Tensor, reset: Tensor | None, state: MambaState) -> tuple[Tensor, MambaState]:
        """One step (export-friendly forms of the same norm and GELU; see :meth:`Mamba.step`)."""
        y, state = self.mixer.step(rms_norm_step(x, self.norm, self.norm_eps), reset, state)
        h = x + y
        return self.ff_norm(h + self.ff_out(gelu_exact(self.ff_in(h)))), state
