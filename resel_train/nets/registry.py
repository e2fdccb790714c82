"""The context encoders by name: the one list that the CLI, the config check, the sweep and the benchmarks read.

Each entry says what the encoder is built from and what it needs from the rest of the house:

- ``section``: its own config section ``model.<name>.*`` (a dataclass below: Mamba's blocks, state size,
  short convolution, ...; S5's layers and modes), whose fields are its constructor arguments. GRU, LSTM and
  MLP have none. Every encoder also takes ``model.input_layers``.
- ``replay_pad``: the zero slots the replay leaves after each trajectory in a packed batch row. Mamba's causal
  convolution reads ``d_conv - 1`` steps back, so that many zeros keep it from seeing the trajectory before;
  the recurrent encoders reset their state at a trajectory's first step and need none.
- ``cuda_graphs``: whether its update can be replayed as a CUDA graph (the cuDNN GRU / LSTM layout needs a
  host sync per call, so they run eagerly).

Importing this module loads no torch: the CLI builds its choices from it at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _help(text: str, default: int) -> Any:
    """A section field with its one line of help (``resel config show`` and docs/config.md print it)."""
    return field(default=default, metadata={"help": text})


@dataclass
class MambaConfig:
    """``model.mamba.*``: the Mamba context encoder (the paper's sizes are the defaults)."""

    n_blocks: int = _help("Mamba blocks stacked in the context encoder.", 1)
    d_state: int = _help("State size per channel of the selective scan.", 64)
    d_conv: int = _help("Width of the causal short convolution (1: none).", 8)
    expand: int = _help("Inner width as a multiple of model.hidden.", 2)
    dt_rank: int = _help("Rank of the input-dependent step size projection.", 16)


@dataclass
class S5Config:
    """``model.s5.*``: the S5 context encoder."""

    n_layers: int = _help("S5 layers stacked in the context encoder.", 1)
    d_state: int = _help("Complex modes per layer.", 64)


@dataclass(frozen=True)
class EncoderSpec:
    """One context encoder: its name, its class in :mod:`resel_train.nets.encoders` and its needs."""

    name: str
    cls: str  # class name in resel_train.nets.encoders
    summary: str
    section: type | None = None  # its config section model.<name>.*: a dataclass of constructor arguments
    pad_from: str | None = None  # field of the section whose value minus one is the replay padding
    cuda_graphs: bool = True

    def kwargs(self, model: Any) -> dict[str, int]:
        """The encoder's constructor arguments from a ``ModelConfig`` (its section, then ``input_layers``)."""
        own = asdict(getattr(model, self.name)) if self.section is not None else {}
        return {**own, "input_layers": model.input_layers}

    def replay_pad(self, model: Any) -> int:
        """Zero slots the replay leaves after every trajectory in a batch row (see the module docstring)."""
        return 0 if self.pad_from is None else int(getattr(getattr(model, self.name), self.pad_from)) - 1

    def config_keys(self) -> list[str]:
        """The dotted config keys this encoder reads (what ``resel train --set`` changes for it)."""
        own = [f"model.{self.name}.{f.name}" for f in fields(self.section)] if self.section is not None else []
        return [*own, "model.input_layers"]


ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in (
    EncoderSpec("mamba", "MambaEncoder", "the RESeL context encoder: a stack of Mamba blocks", MambaConfig,
                pad_from="d_conv"),
    EncoderSpec("gru", "GRUEncoder", "the paper's GRU ablation", cuda_graphs=False),
    EncoderSpec("lstm", "LSTMEncoder", "the pomdp-baselines LSTM", cuda_graphs=False),
    EncoderSpec("s5", "S5Encoder", "a stack of resettable S5 layers", S5Config),
    EncoderSpec("mlp", "MLPEncoder", "no memory: the current inputs only"),
)}
ENCODER_NAMES: tuple[str, ...] = tuple(ENCODERS)


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry of ``name``, or a ValueError that lists the names there are."""
    try:
        return ENCODERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown encoder {name!r}; choose one of {ENCODER_NAMES}") from None
