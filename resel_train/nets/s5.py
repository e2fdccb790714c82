"""The resettable S5 layer (Lu et al. 2023, on S5 by Smith et al. 2022), reset-aware in both forms.

One S5 SSM per layer, with ``d_state`` = P complex modes read by a ``d_model`` = H wide stream:
- A: diagonal, complex, Lambda (P,) initialised from the eigenvalues of HiPPO-N (the normal part of
  HiPPO-LegS, size 2P): real parts -1/2, imaginary parts from the skew part's spectrum; with
  conjugate symmetry only one eigenvalue of each conjugate pair is kept and the output is 2 Re(C h).
  The real part is clipped to <= -1e-4 (S5's ``clip_eigs``) so the recurrence stays stable on
  unbounded control episodes.
- B (P, H), C (H, P) complex: B = V^-1 B0 and C = C0 V with B0, C0 lecun-normal and V the HiPPO-N
  eigenvectors; D (H,) standard normal.
- Timescale: a learned log step per mode, initialised log-uniform in [dt_min, dt_max].
- Zero-order hold: Abar = exp(Lambda dt), Bbar = (Abar - 1) / Lambda * B.
- h_t = (1 - reset_t) Abar h_{t-1} + Bbar u_t;  y_t = 2 Re(C h_t) + D u_t.

The layer follows the paper's code (popjaxrl ``SequenceLayer`` with its defaults prenorm,
do_gtrxl_norm and the ``half_glu1`` activation of its PPO agents): x + g(y) with
y = LN(SSM(LN(x))) (one LayerNorm, applied before and after the SSM) and g(y) = GELU(y) * sigmoid(W GELU(y)),
GELU in its tanh form (flax's default). Parameters and state are real: the complex numbers are
held as real and imaginary parts, so the stepwise form exports to ONNX with real tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resel_train.ops.s5_scan import s5_scan, s5_scan_loop

S5State = tuple[Tensor, Tensor]  # (real part, imaginary part) of h, each (batch, d_state)
SCAN_IMPLS = ("parallel", "loop")


def hippo_n(n: int) -> tuple[Tensor, Tensor]:
    """Eigenvalues (n,) and unitary eigenvectors (n, n) of HiPPO-N, complex128, eigenvalues sorted by
    imaginary part. HiPPO-N = HiPPO-LegS + p p^T (p_k = sqrt(k + 1/2)) = -I/2 + a skew-symmetric matrix."""
    k = torch.arange(n, dtype=torch.float64)
    q = torch.sqrt(2 * k + 1)
    legs = -(torch.tril(q[:, None] * q[None, :]) - torch.diag(k))
    p = torch.sqrt(k + 0.5)
    normal = legs + p[:, None] * p[None, :]
    skew = normal - torch.diag(torch.diagonal(normal))
    imag, vectors = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # -i * skew is Hermitian
    real = torch.diagonal(normal).mean().expand(n)
    return torch.complex(real, imag), vectors


class S5SSM(nn.Module):
    """The S5 state-space model of one layer (see the module docstring)."""

    def __init__(self, d_model: int, d_state: int, dt_min: float = 1e-3, dt_max: float = 0.1,
                 scan_impl: str = "parallel") -> None:
        super().__init__()
        if scan_impl not in SCAN_IMPLS:
            raise ValueError(f"scan_impl must be one of {SCAN_IMPLS}; got {scan_impl!r}")
        self.d_model, self.d_state, self.scan_impl = d_model, d_state, scan_impl
        eigenvalues, vectors = hippo_n(2 * d_state)
        lam, v = eigenvalues[:d_state], vectors[:, :d_state]  # one of each conjugate pair
        b0 = torch.randn(2 * d_state, d_model, dtype=torch.float64) / math.sqrt(2 * d_state)
        b = v.conj().T @ b0.to(torch.complex128)  # (P, H)
        c0 = torch.complex(torch.randn(d_model, 2 * d_state, dtype=torch.float64),
                           torch.randn(d_model, 2 * d_state, dtype=torch.float64)) / math.sqrt(2 * d_state * d_model)
        c = c0 @ v  # (H, P)
        log_dt = torch.rand(d_state) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.Lambda_re = nn.Parameter(lam.real.float())
        self.Lambda_im = nn.Parameter(lam.imag.float())
        self.B_re, self.B_im = nn.Parameter(b.real.float()), nn.Parameter(b.imag.float())
        self.C_re, self.C_im = nn.Parameter(c.real.float()), nn.Parameter(c.imag.float())
        self.D = nn.Parameter(torch.randn(d_model))
        self.log_step = nn.Parameter(log_dt)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> S5State:
        """Zero state: the real and imaginary parts, (batch, d_state) each."""
        zeros = torch.zeros(batch, self.d_state, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def discretise(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Zero-order hold in real arithmetic: (Re, Im) of log Abar = Lambda dt (P,) and of Bbar (P, H)."""
        lam_re = self.Lambda_re.clamp(max=-1e-4)
        lam_im = self.Lambda_im
        dt = torch.exp(self.log_step)
        log_re, log_im = lam_re * dt, lam_im * dt
        mag = torch.exp(log_re)
        num_re, num_im = mag * torch.cos(log_im) - 1.0, mag * torch.sin(log_im)  # Abar - 1
        den = lam_re * lam_re + lam_im * lam_im
        coef_re = (num_re * lam_re + num_im * lam_im) / den  # (Abar - 1) / Lambda
        coef_im = (num_im * lam_re - num_re * lam_im) / den
        bbar_re = coef_re[:, None] * self.B_re - coef_im[:, None] * self.B_im
        bbar_im = coef_re[:, None] * self.B_im + coef_im[:, None] * self.B_re
        return log_re, log_im, bbar_re, bbar_im

    def _readout(self, h_re: Tensor, h_im: Tensor, u: Tensor) -> Tensor:
        return 2.0 * (h_re @ self.C_re.T - h_im @ self.C_im.T) + self.D * u

    def forward(self, u: Tensor, resets: Tensor, state: S5State) -> tuple[Tensor, S5State]:
        """u (batch, L, H), resets (batch, L) -> y (batch, L, H), state after the last step."""
        log_re, log_im, bbar_re, bbar_im = self.discretise()
        drive = torch.complex(u @ bbar_re.T, u @ bbar_im.T)  # Bbar u_t, (batch, L, P)
        scan = s5_scan if self.scan_impl == "parallel" else s5_scan_loop
        h = scan(torch.complex(log_re, log_im), drive, resets, torch.complex(*state))
        h_re, h_im = h.real, h.imag
        return self._readout(h_re, h_im, u), (h_re[:, -1].contiguous(), h_im[:, -1].contiguous())

    def step(self, u: Tensor, reset: Tensor, state: S5State) -> tuple[Tensor, S5State]:
        """One step, O(1), real tensors only: u (batch, H) -> y (batch, H), new state."""
        log_re, log_im, bbar_re, bbar_im = self.discretise()
        keep = (1.0 - reset.to(u.dtype))[:, None]
        mag = torch.exp(log_re)
        a_re, a_im = mag * torch.cos(log_im), mag * torch.sin(log_im)
        h_re, h_im = state[0] * keep, state[1] * keep
        new_re = a_re * h_re - a_im * h_im + u @ bbar_re.T
        new_im = a_re * h_im + a_im * h_re + u @ bbar_im.T
        return self._readout(new_re, new_im, u), (new_re, new_im)


class S5Layer(nn.Module):
    """x + GELU(y) * sigmoid(W GELU(y)) with y = LN(SSM(LN(x))) (see the module docstring)."""

    def __init__(self, d_model: int, d_state: int, **ssm_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.ssm = S5SSM(d_model, d_state, **ssm_kwargs)
        self.gate = nn.Linear(d_model, d_model)

    def _mix(self, x: Tensor, y: Tensor) -> Tensor:
        y = F.gelu(self.norm(y), approximate="tanh")
        return x + y * torch.sigmoid(self.gate(y))

    def forward(self, x: Tensor, resets: Tensor, state: S5State) -> tuple[Tensor, S5State]:
        """x (batch, L, H) -> the gated residual output and the SSM's last state."""
        y, state = self.ssm(self.norm(x), resets, state)
        return self._mix(x, y), state

    def step(self, x: Tensor, reset: Tensor, state: S5State) -> tuple[Tensor, S5State]:
        """One step of :meth:`forward`: x (batch, H)."""
        y, state = self.ssm.step(self.norm(x), reset, state)
        return self._mix(x, y), state
