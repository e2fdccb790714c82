"""Context encoders: MLP (Linear -> ELU, ``input_layers`` times) -> memory core -> ELU -> Linear.

The input MLP has one layer except on Key-to-Door, where the paper uses three (256 each).
Every encoder shares one interface:

Every encoder offers
- ``initial_state(batch)``: a tuple of zero tensors (empty for the memoryless MLP);
- ``forward(x_seq, resets, state=None) -> (y_seq, final_state)`` over (batch, L, in_dim) sequences;
- ``step(x_t, reset_t, state) -> (y_t, new_state)``: O(1) per step, returns new tensors and never
  writes into its inputs (ONNX exporters drop in-place writes to graph inputs).
A reset (1 at the first step of a trajectory) discards all memory before it, so trajectories can
be stacked in one row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resel_train.nets.mamba import MambaBlock
from resel_train.nets.registry import encoder_spec
from resel_train.nets.s5 import S5Layer
from resel_train.nets.segments import segment_layout
from resel_train.ops import cpu_kernel
from resel_train.ops.activations import elu
from resel_train.ops.fold import fold_projections
from resel_train.ops.mamba_cpu import EncoderLayout, encoder_scan

State = tuple[Tensor, ...]


class ContextEncoder(nn.Module):
    """Shared wrapper; subclasses implement the memory core between the two linear layers."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden: int = 256, input_layers: int = 1) -> None:
        super().__init__()
        if input_layers < 1:
            raise ValueError(f"input_layers must be >= 1, got {input_layers}")
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        self.input = nn.Linear(in_dim, hidden)
        self.input_more = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(input_layers - 1))
        self.output = nn.Linear(hidden, out_dim)

    def embed_input(self, x: Tensor, projections: Sequence[nn.Linear] | None = None) -> Tensor:
        """The MLP before the memory core (every layer ELU-activated); ``projections`` as in :meth:`forward`."""
        if projections is None:
            h = elu(self.input(x))
        else:
            weight, bias = fold_projections(self.input.weight.t(), self.input.bias, projections)
            h = elu(F.linear(x, weight.t(), bias))
        for layer in self.input_more:
            h = elu(layer(h))
        return h

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        """The state before a trajectory's first step (zeros), one tensor per :meth:`state_names` entry."""
        raise NotImplementedError

    def state_names(self) -> list[str]:
        """Stable names of the state tensors, in order (used for exported graph I/O)."""
        raise NotImplementedError

    def _core(self, h: Tensor, resets: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def _core_step(self, h: Tensor, reset: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def forward(self, x_seq: Tensor, resets: Tensor, state: State | None = None,
                projections: Sequence[nn.Linear] | None = None) -> tuple[Tensor, State]:
        """Context embeddings of a packed sequence (batch, L, in_dim), restarting the memory where ``resets`` is 1.

        ``projections``: the linear layers that embed ``x_seq``'s column blocks into the ``in_dim`` inputs
        (a :class:`~resel_train.nets.inputs.HistoryEmbedding`'s); they are folded into the first layer, so
        ``x_seq`` then holds the raw inputs.
        """
        if state is None:
            state = self.initial_state(x_seq.shape[0], x_seq.device, x_seq.dtype)
        h, state = self._core(self.embed_input(x_seq, projections), resets, state)
        return self.output(elu(h)), state

    def step(self, x_t: Tensor, reset_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step (batch, in_dim) from ``state``: the O(1) form a controller runs, equal to ``forward``."""
        h, state = self._core_step(self.embed_input(x_t), reset_t, state)
        return self.output(elu(h)), state


class MambaEncoder(ContextEncoder):
    """The RESeL context encoder: a stack of Mamba blocks."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 128,
        hidden: int = 256,
        n_blocks: int = 1,
        d_state: int = 64,
        d_conv: int = 8,
        expand: int = 2,
        dt_rank: int = 16,
        scan_impl: str = "auto",
        input_layers: int = 1,
    ) -> None:
        super().__init__(in_dim, out_dim, hidden, input_layers)
        self.blocks = nn.ModuleList(
            MambaBlock(hidden, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, scan_impl=scan_impl)
            for _ in range(n_blocks)
        )

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        """Per block: the short convolution's window and the scan's state."""
        return tuple(t for block in self.blocks for t in block.mixer.initial_state(batch, device, dtype))

    def state_names(self) -> list[str]:
        """``blockI.conv`` and ``blockI.ssm`` per block."""
        return [f"block{i}.{kind}" for i in range(len(self.blocks)) for kind in ("conv", "ssm")]

    def forward(self, x_seq: Tensor, resets: Tensor, state: State | None = None,
                projections: Sequence[nn.Linear] | None = None) -> tuple[Tensor, State]:
        """As :meth:`ContextEncoder.forward`; on the CPU kernels the whole encoder is one autograd node
        (``resel_train.ops.mamba_cpu.encoder_scan``), elsewhere the modules run op by op."""
        projections = tuple(projections or ())
        if not (all(b.mixer.on_cpu_kernels(x_seq) for b in self.blocks)
                and all(p.bias is not None for p in projections)):  # (the node's fold takes biased projections)
            return super().forward(x_seq, resets, state, projections or None)
        layout = EncoderLayout(projections, len(self.input_more), len(self.blocks), self.blocks[0].ff_norm.eps)
        tensors: list[Tensor | None] = [self.input.weight, self.input.bias]
        tensors += [t for p in projections for t in (p.weight, p.bias)]
        tensors += [t for layer in self.input_more for t in (layer.weight, layer.bias)]
        for i, block in enumerate(self.blocks):
            m = block.mixer
            tensors += [block.norm.weight, block.norm_eps, m.in_proj.weight, m.conv1d.weight, m.conv1d.bias,
                        m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias, m.A_log, m.D, m.out_proj.weight,
                        block.ff_in.weight, block.ff_in.bias, block.ff_out.weight, block.ff_out.bias,
                        block.ff_norm.weight, block.ff_norm.bias]
            tensors += [None, None] if state is None else [state[2 * i], state[2 * i + 1]]
        tensors += [self.output.weight, self.output.bias]
        return encoder_scan(x_seq, resets, layout, tensors)

    def _core(self, h, resets, state):
        new_state: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            h, (conv, ssm) = block(h, resets, (state[2 * i], state[2 * i + 1]))
            new_state += [conv, ssm]
        return h, tuple(new_state)

    def _core_step(self, h, reset, state):
        new_state: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            h, (conv, ssm) = block.step(h, reset, (state[2 * i], state[2 * i + 1]))
            new_state += [conv, ssm]
        return h, tuple(new_state)


class GRUEncoder(ContextEncoder):
    """The paper's GRU ablation. On a GPU the sequence form runs ``nn.GRU`` (cuDNN) once over the batch
    laid out one trajectory segment per row, since ``nn.GRU`` cannot take resets; on a CPU (float32)
    a compiled reset-aware loop (``ops.cpu_kernel``) runs the same maths on the packed rows directly.
    ``step`` applies the same maths to the same weights, one step at a time."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden: int = 256, input_layers: int = 1) -> None:
        super().__init__(in_dim, out_dim, hidden, input_layers)
        self.gru = nn.GRU(hidden, hidden, num_layers=1, batch_first=True)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        """The GRU's hidden vector."""
        return (torch.zeros(batch, self.hidden, device=device, dtype=dtype),)

    def state_names(self) -> list[str]:
        """One tensor, ``gru``."""
        return ["gru"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints from before the nn.GRU core stored the same tensors under a GRUCell's names
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if f"{prefix}cell.{name}" in state_dict:
                state_dict[f"{prefix}gru.{name}_l0"] = state_dict.pop(f"{prefix}cell.{name}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _core(self, h_in, resets, state):
        g = self.gru
        if not h_in.is_cuda and h_in.dtype == torch.float32 and cpu_kernel.load() is not None:
            y = _KernelGRU.apply(F.linear(h_in, g.weight_ih_l0, g.bias_ih_l0), g.weight_hh_l0, g.bias_hh_l0, resets,
                                 state[0])
            return y, (y[:, -1],)
        layout = segment_layout(resets)
        h0 = layout.initial(state[0], ~resets[:, 0].to(torch.bool))
        y, _ = self.gru(layout.pack(h_in), h0[None])
        y = layout.unpack(y)
        # nn.GRU's own final state would include the padding after short segments; the contract is
        # the state after the row's last step, which is that step's output
        return y, (y[:, -1],)

    def _core_step(self, h_in, reset, state):
        g = self.gru
        h = state[0] * (1.0 - reset.to(h_in.dtype))[:, None]
        i_r, i_z, i_n = F.linear(h_in, g.weight_ih_l0, g.bias_ih_l0).chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(h, g.weight_hh_l0, g.bias_hh_l0).chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, (h,)


class _KernelGRU(torch.autograd.Function):
    """The GRU recurrence over precomputed input gates, reset-aware, as one compiled loop per batch row."""

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, resets, h0):
        gi, w_hh, b_hh, h0 = gi.contiguous(), w_hh.contiguous(), b_hh.contiguous(), h0.contiguous()
        reset = resets.to(torch.bool).contiguous()
        y, gates = cpu_kernel.gru_forward(cpu_kernel.load(), gi, w_hh, b_hh, reset, h0)
        ctx.save_for_backward(w_hh, reset, h0, y, gates)
        return y

    @staticmethod
    def backward(ctx, dy):
        w_hh, reset, h0, y, gates = ctx.saved_tensors
        dgi, dw_hh, db_hh, dh0 = cpu_kernel.gru_backward(cpu_kernel.load(), w_hh, reset, h0, y, gates, dy.contiguous())
        return dgi, dw_hh, db_hh, None, dh0


class LSTMEncoder(ContextEncoder):
    """The pomdp-baselines LSTM. Like the GRU, the sequence form runs ``nn.LSTM`` once over the batch laid
    out one trajectory segment per row; the segments are packed by length, so the LSTM's own final
    (h, c) is each segment's state after its last valid step (the cell state c is not an output, so it
    could not be read back from the padded outputs). ``step`` is the same maths on the same weights."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden: int = 256, input_layers: int = 1) -> None:
        super().__init__(in_dim, out_dim, hidden, input_layers)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=1, batch_first=True)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        """The LSTM's hidden and cell vectors."""
        return tuple(torch.zeros(batch, self.hidden, device=device, dtype=dtype) for _ in range(2))

    def state_names(self) -> list[str]:
        """``lstm.h`` and ``lstm.c``."""
        return ["lstm.h", "lstm.c"]

    def _core(self, h_in, resets, state):
        layout = segment_layout(resets)
        carried = ~resets[:, 0].to(torch.bool)
        h0, c0 = layout.initial(state[0], carried), layout.initial(state[1], carried)
        lengths = torch.bincount(layout.index // layout.max_len, minlength=layout.num_segments)
        packed = nn.utils.rnn.pack_padded_sequence(layout.pack(h_in), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        y, (h_n, c_n) = self.lstm(packed, (h0[None], c0[None]))
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=layout.max_len)
        row_last = torch.cat([layout.row_first[1:] - 1, layout.row_first.new_full((1,), layout.num_segments - 1)])
        return layout.unpack(y), (h_n[0, row_last], c_n[0, row_last])

    def _core_step(self, h_in, reset, state):
        m = self.lstm
        keep = (1.0 - reset.to(h_in.dtype))[:, None]
        h, c = state[0] * keep, state[1] * keep
        gates = F.linear(h_in, m.weight_ih_l0, m.bias_ih_l0) + F.linear(h, m.weight_hh_l0, m.bias_hh_l0)
        i, f, g, o = gates.chunk(4, dim=-1)  # nn.LSTM's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class S5Encoder(ContextEncoder):
    """The resettable S5 of the in-context RL paper: a stack of S5 layers (resel_train/nets/s5.py) at width
    ``hidden``; per layer the state is the complex S5 state as real and imaginary parts."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 128,
        hidden: int = 256,
        n_layers: int = 1,
        d_state: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        scan_impl: str = "parallel",
        input_layers: int = 1,
    ) -> None:
        super().__init__(in_dim, out_dim, hidden, input_layers)
        self.layers = nn.ModuleList(
            S5Layer(hidden, d_state, dt_min=dt_min, dt_max=dt_max, scan_impl=scan_impl) for _ in range(n_layers)
        )

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        """Per layer: the real and imaginary parts of the complex modes."""
        return tuple(t for layer in self.layers for t in layer.ssm.initial_state(batch, device, dtype))

    def state_names(self) -> list[str]:
        """``layerI.re`` and ``layerI.im`` per layer."""
        return [f"layer{i}.{part}" for i in range(len(self.layers)) for part in ("re", "im")]

    def _core(self, h, resets, state):
        new_state: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            h, pair = layer(h, resets, (state[2 * i], state[2 * i + 1]))
            new_state += pair
        return h, tuple(new_state)

    def _core_step(self, h, reset, state):
        new_state: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            h, pair = layer.step(h, reset, (state[2 * i], state[2 * i + 1]))
            new_state += pair
        return h, tuple(new_state)


class MLPEncoder(ContextEncoder):
    """No memory: the baseline that sees only the current inputs."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden: int = 256, input_layers: int = 1) -> None:
        super().__init__(in_dim, out_dim, hidden, input_layers)
        self.hidden_layer = nn.Linear(hidden, hidden)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        """Nothing: the MLP keeps no memory."""
        return ()

    def state_names(self) -> list[str]:
        """No state tensors."""
        return []

    def _core(self, h, resets, state):
        return self.hidden_layer(h), ()

    def _core_step(self, h, reset, state):
        return self.hidden_layer(h), ()


def make_encoder(kind: str, in_dim: int, out_dim: int = 128, hidden: int = 256, input_layers: int = 1,
                 **kwargs) -> ContextEncoder:
    """Build a context encoder by its registry name. ``input_layers``: the MLP before the memory core (all kinds);
    ``kwargs``: the encoder's own section (Mamba: n_blocks, d_state, ...; S5: n_layers, d_state, ...); GRU, LSTM
    and MLP take none."""
    spec = encoder_spec(kind)
    if spec.section is None and kwargs:
        raise ValueError(f"the {kind} encoder takes no encoder_kwargs; got {sorted(kwargs)}")
    return globals()[spec.cls](in_dim, out_dim, hidden, input_layers=input_layers, **kwargs)
