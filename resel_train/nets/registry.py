"""The context encoders by name: the one list that the CLI, the config check, the sweep and the benchmarks read.

Each entry says what the encoder is built from and what it needs from the rest of the house:

- ``config``: its section of ``model.*`` -- the config keys it reads and the constructor argument each becomes
  (S5 reads ``model.n_blocks`` as its number of layers and ``model.d_state`` as its complex modes per layer;
  GRU, LSTM and MLP read none). Every encoder also takes ``model.input_layers``.
- ``replay_pad``: the zero slots the replay leaves after each trajectory in a packed batch row. Mamba's causal
  convolution reads ``d_conv - 1`` steps back, so that many zeros keep it from seeing the trajectory before;
  the recurrent encoders reset their state at a trajectory's first step and need none.
- ``cuda_graphs``: whether its update can be replayed as a CUDA graph (the cuDNN GRU / LSTM layout needs a
  host sync per call, so they run eagerly).

Importing this module loads no torch: the CLI builds its choices from it at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EncoderSpec:
    """One context encoder: its name, its class in :mod:`resel_train.nets.encoders` and its needs."""

    name: str
    cls: str  # class name in resel_train.nets.encoders
    summary: str
    config: Mapping[str, str]  # constructor argument -> the model.* config key it is read from
    pad_from: str | None = None  # model.* key whose value minus one is the replay padding (None: no padding)
    cuda_graphs: bool = True

    def kwargs(self, model: Any) -> dict[str, int]:
        """The encoder's constructor arguments from a ``ModelConfig`` (its section, then ``input_layers``)."""
        return {**{arg: getattr(model, key) for arg, key in self.config.items()}, "input_layers": model.input_layers}

    def replay_pad(self, model: Any) -> int:
        """Zero slots the replay leaves after every trajectory in a batch row (see the module docstring)."""
        return 0 if self.pad_from is None else int(getattr(model, self.pad_from)) - 1

    def config_keys(self) -> list[str]:
        """The dotted config keys this encoder reads (what ``resel train --set`` changes for it)."""
        return [f"model.{key}" for key in (*self.config.values(), "input_layers")]


ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in (
    EncoderSpec("mamba", "MambaEncoder", "the RESeL context encoder: a stack of Mamba blocks",
                {"n_blocks": "n_blocks", "d_state": "d_state", "d_conv": "d_conv", "expand": "expand",
                 "dt_rank": "dt_rank"}, pad_from="d_conv"),
    EncoderSpec("gru", "GRUEncoder", "the paper's GRU ablation", {}, cuda_graphs=False),
    EncoderSpec("lstm", "LSTMEncoder", "the pomdp-baselines LSTM", {}, cuda_graphs=False),
    EncoderSpec("s5", "S5Encoder", "a stack of resettable S5 layers", {"n_layers": "n_blocks", "d_state": "d_state"}),
    EncoderSpec("mlp", "MLPEncoder", "no memory: the current inputs only", {}),
)}
ENCODER_NAMES: tuple[str, ...] = tuple(ENCODERS)


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry of ``name``, or a ValueError that lists the names there are."""
    try:
        return ENCODERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown encoder {name!r}; choose one of {ENCODER_NAMES}") from None
