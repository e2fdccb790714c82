"""The deploy contract: what a RESeL stepwise policy file is, written once for every side that touches one.

The stepwise model (``resel_train.stepwise``), the exporters (``resel.export.onnx`` / ``.tensorrt``) and every
backend of :class:`resel_deploy.Controller` take from here, and from nowhere else:

- the graph's tensor names: :data:`INPUT_NAMES`, the output names (the action mapping's ``output_names``), and the
  state tensors ``state_in.<name>`` / ``state_out.<name>`` (:func:`state_in`, :func:`state_out`);
- the state layout: ``prev_obs``, ``prev_act`` (:data:`HISTORY_STATES`), then the encoder's tensors, each
  described as ``{"name", "shape": ["batch", sizes...], "dtype"}`` (:func:`state_entry`);
- the action mapping from the policy's action to env units, a Box's (:class:`BoxMapping`) or a Discrete space's
  (:class:`DiscreteMapping`), chosen once per policy (:class:`ActionMapping`);
- the metadata a stepwise policy describes itself with (:func:`stepwise_metadata`) and the file format
  markers (:data:`FORMAT`, :data:`ENGINE_FORMAT`, :func:`detect_kind`, :func:`decode_metadata`).

Pure Python and numpy: a robot that has never installed torch imports it.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

# ---- format markers -------------------------------------------------------------------------
FORMAT = "resel-stepwise"  # the ONNX file's metadata "format"
FORMAT_VERSION = 1
ENGINE_FORMAT = "resel-stepwise-tensorrt"  # the "engine_format" of a TensorRT engine's JSON sidecar
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_MAGIC = b"PK\x03\x04"  # torch.save's zip container

# ---- tensor names ---------------------------------------------------------------------------
BATCH = "batch"  # the dynamic axis in every shape
INPUT_NAMES = ("obs", "prev_reward", "is_first", "noise")  # then state_in(name) for every state tensor
# the outputs: the action mapping's three output_names, then state_out(name) for every state tensor
STATE_IN, STATE_OUT = "state_in.", "state_out."  # prefixes of the state tensors the graph reads and writes
HISTORY_STATES = ("prev_obs", "prev_act")  # the first two state tensors, before the encoder's


def state_in(name: str) -> str:
    """The graph input that carries state tensor ``name`` into a step."""
    return STATE_IN + name


def state_out(name: str) -> str:
    """The graph output that carries state tensor ``name`` out of a step."""
    return STATE_OUT + name


def is_state_name(tensor: str) -> bool:
    """Whether a graph tensor name is a state input or output (a metadata error names ``state_layout`` then)."""
    return tensor.startswith((STATE_IN, STATE_OUT))


def state_entry(name: str, shape: Sequence[int], dtype: str = "float32") -> dict[str, Any]:
    """One tensor as the metadata lists it: ``{"name", "shape": ["batch", sizes...], "dtype"}``."""
    return {"name": name, "shape": [BATCH, *(int(d) for d in shape)], "dtype": dtype}


def state_layout(obs_dim: int, act_dim: int, encoder_states: Sequence[tuple[str, Sequence[int]]]
                 ) -> list[tuple[str, tuple[int, ...]]]:
    """(name, per-row shape) of every state tensor, in step order: prev_obs, prev_act, then the encoder's."""
    return [(HISTORY_STATES[0], (obs_dim,)), (HISTORY_STATES[1], (act_dim,)),
            *((n, tuple(int(d) for d in s)) for n, s in encoder_states)]


def io_spec(obs_dim: int, actions: ActionMapping, states: Sequence[tuple[str, Sequence[int]]]
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names, shapes (``"batch"`` for the dynamic axis) and dtypes of the step's inputs and outputs.

    ``states``: the full layout (:func:`state_layout`); the action output's name, shape and dtype are the
    mapping's (a Discrete space's action is int64 (batch,)).
    """
    act_dim = actions.act_dim
    inputs = [state_entry(INPUT_NAMES[0], (obs_dim,)), state_entry(INPUT_NAMES[1], (1,)),
              state_entry(INPUT_NAMES[2], ()), state_entry(INPUT_NAMES[3], (act_dim,))]
    inputs += [state_entry(state_in(n), s) for n, s in states]
    action, head_a, head_b = actions.output_names
    first = state_entry(action, actions.row_shape, actions.action_dtype)
    outputs = [first, state_entry(head_a, (act_dim,)), state_entry(head_b, (act_dim,))]
    outputs += [state_entry(state_out(n), s) for n, s in states]
    return inputs, outputs


def state_shapes(meta: Mapping[str, Any], batch: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape with the batch axis) of every state tensor of a validated metadata dict."""
    return [(s["name"], (batch, *s["shape"][1:])) for s in meta["state_layout"]]


@dataclass
class HostBuffers:
    """The step's inputs and outputs as numpy buffers of one batch (allocated once); a backend reads and writes
    them in place. float32, but the action is the mapping's (a Discrete space's: int64 (batch,))."""

    obs: np.ndarray  # (batch, obs_dim)
    prev_reward: np.ndarray  # (batch, 1)
    is_first: np.ndarray  # (batch,)
    noise: np.ndarray  # (batch, act_dim); Gumbel noise for a Discrete space
    action: np.ndarray  # (batch, act_dim); Discrete: (batch,) int64
    mean: np.ndarray  # (batch, act_dim); Discrete: the logits
    log_std: np.ndarray  # (batch, act_dim); Discrete: the log-probs

    @classmethod
    def numpy(cls, batch: int, obs_dim: int, actions: ActionMapping) -> HostBuffers:
        """Zeroed buffers in ordinary (pageable) host memory."""
        z = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
        act_dim = actions.act_dim
        return cls(z(batch, obs_dim), z(batch, 1), z(batch), z(batch, act_dim), actions.zeros(batch),
                   z(batch, act_dim), z(batch, act_dim))

    def inputs(self) -> tuple[np.ndarray, ...]:
        """The buffers of :data:`INPUT_NAMES`, in that order."""
        return self.obs, self.prev_reward, self.is_first, self.noise

    def outputs(self) -> tuple[np.ndarray, ...]:
        """The buffers of the action mapping's ``output_names``, in that order."""
        return self.action, self.mean, self.log_std


# ---- the action mapping ---------------------------------------------------------------------
# One mapping object per policy, chosen once (from the metadata, a checkpoint's model dict or the env's action
# space), owns everything about the action that differs between a Box and a Discrete space: the env units, the
# step's action output (names, dtype, shape), the exploration noise, and how a graph's bounds and an env's
# action space are checked. The controller, the rollout, the backends and the torch side
# (``resel_train.action_space``) use it instead of branching on the space.
Probe = Callable[[Any], tuple[np.ndarray, np.ndarray, np.ndarray]]  # noise -> the step's (action, head a, head b)


class ActionMapping(ABC):
    """The policy's action -> env units, with the per-space parts of the deploy contract (see the module doc).

    ``low`` / ``high``: the finite per-dimension bounds the env action lies within (a Discrete space: its index
    range 0 .. n-1); ``scale`` and ``offset`` are their half-range and midpoint.
    """

    discrete: ClassVar[bool]  # the metadata's "discrete" key
    output_names: ClassVar[tuple[str, str, str]]  # the step's action output, then its head's pair
    head_names: ClassVar[tuple[str, str]]  # the head's pair as Controller.last_output names it
    action_dtype: ClassVar[str]  # dtype of the step's action output
    low: tuple[float, ...]
    high: tuple[float, ...]

    @staticmethod
    def from_space(space: Any) -> ActionMapping:
        """From a Gymnasium action space: ``Discrete(n)`` (it has ``n``) or a ``Box`` (``low`` / ``high``)."""
        if hasattr(space, "n"):
            return DiscreteMapping(int(space.n))
        return BoxMapping.from_bounds(space.low, space.high, int(np.prod(space.shape)))

    @staticmethod
    def from_meta(meta: Mapping[str, Any]) -> ActionMapping:
        """From a stepwise policy's metadata or a checkpoint's model dict (``act_dim``, ``discrete``, the bounds)."""
        return mapping_kind(bool(meta.get("discrete", False))).for_dims(
            int(meta["act_dim"]), meta.get("action_low"), meta.get("action_high"))

    @classmethod
    @abstractmethod
    def for_dims(cls, act_dim: int, low: Any = None, high: Any = None) -> ActionMapping:
        """The mapping of this space for ``act_dim`` (the action vector's width) and the given bounds."""

    @property
    @abstractmethod
    def act_dim(self) -> int:
        """Width of the policy's action vector (a Discrete space's one-hot): also the noise and prev_act width."""

    @property
    @abstractmethod
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one robot's action output of the step (without the batch axis)."""

    @property
    def scale(self) -> list[float]:
        """(high - low) / 2 per dimension."""
        return [(hi - lo) / 2 for lo, hi in zip(self.low, self.high, strict=True)]

    @property
    def offset(self) -> list[float]:
        """(high + low) / 2 per dimension."""
        return [(hi + lo) / 2 for lo, hi in zip(self.low, self.high, strict=True)]

    def zeros(self, batch: int) -> np.ndarray:
        """A zeroed action output buffer for ``batch`` robots (what a backend writes the step's action into)."""
        return np.zeros((batch, *self.row_shape), self.action_dtype)

    @abstractmethod
    def to_env(self, action: np.ndarray) -> np.ndarray | int:
        """The env's action for the policy's action as the replay stores it (and the step's state holds it)."""

    @abstractmethod
    def encode(self, env_action: Any) -> np.ndarray:
        """The policy's float32 action for an env action: the inverse of :meth:`to_env` within the bounds."""

    @abstractmethod
    def sample_noise(self, rng: np.random.Generator, out: np.ndarray) -> None:
        """Write the noise of a sampled (stochastic) step into ``out`` in place, from ``rng``."""

    @abstractmethod
    def read_graph_bounds(self, probe: Probe) -> tuple[np.ndarray, np.ndarray] | None:
        """The (low, high) a graph acts within, read out of it with ``probe``; None where there is nothing to read."""

    @abstractmethod
    def check_step_out(self, out: np.ndarray | None) -> None:
        """Refuse an ``out=`` buffer that one robot's step cannot write its action into."""

    @abstractmethod
    def step_result(self, row: np.ndarray, out: np.ndarray | None) -> np.ndarray | int:
        """One robot's step result from its action output ``row``: a copy, ``out`` filled, or an index."""

    @abstractmethod
    def out_buffer(self) -> np.ndarray | None:
        """A buffer a control loop passes as ``out=`` to step without allocating, or None where steps return ints."""

    @abstractmethod
    def describe(self) -> str:
        """What the policy emits, for messages."""

    @abstractmethod
    def matches_kind(self, space: Any) -> bool:
        """Whether a Gymnasium action space is of this mapping's kind (Box or Discrete)."""

    @abstractmethod
    def size_mismatch(self, space: Any) -> str | None:
        """How a space of the right kind disagrees with the policy's action size (after the env id), or None."""

    @abstractmethod
    def bounds_note(self, space: Any) -> str | None:
        """A note when the env's bounds differ from the policy's (it still runs), or None."""

    @staticmethod
    @abstractmethod
    def n_bounds(act_dim: int) -> int:
        """How many entries the metadata's ``action_low`` / ``action_high`` hold."""

    @staticmethod
    @abstractmethod
    def bounds_problem(low: list[float], high: list[float], act_dim: int) -> str | None:
        """What is wrong with (finite, ordered) metadata bounds for this space, said of ``action_low``; or None."""


def mapping_kind(discrete: bool) -> type[ActionMapping]:
    """The mapping class of a Discrete (``discrete``) or Box action space: where the choice is made."""
    return DiscreteMapping if discrete else BoxMapping


@dataclass(frozen=True)
class BoxMapping(ActionMapping):
    """A Box: ``squashed * scale + offset`` per dimension (the policy's squashed action in [-1, 1]).

    A dimension whose bound is infinite (or not given) stays unscaled, in [-1, 1]: the training loop, ``predict``,
    the exported graph and every backend act within the same finite ``low`` .. ``high``.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    discrete = False
    output_names = ("action", "action_mean", "action_log_std")
    head_names = ("mean", "log_std")
    action_dtype = "float32"

    @classmethod
    def from_bounds(cls, low: Any, high: Any, act_dim: int) -> BoxMapping:
        """From per-dimension (or scalar) bounds; infinite or missing bounds give [-1, 1]."""
        if low is None or high is None:
            return cls((-1.0,) * act_dim, (1.0,) * act_dim)
        lows = [float(v) for v in np.asarray(low, np.float64).reshape(-1)]
        highs = [float(v) for v in np.asarray(high, np.float64).reshape(-1)]
        lows, highs = (lows * act_dim if len(lows) == 1 else lows), (highs * act_dim if len(highs) == 1 else highs)
        if len(lows) != act_dim or len(highs) != act_dim:
            raise ValueError(f"action bounds must have act_dim={act_dim} entries; got {len(lows)} and {len(highs)}")
        out_lo, out_hi = [], []
        for lo, hi in zip(lows, highs, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                lo, hi = -1.0, 1.0
            if hi < lo:
                raise ValueError(f"action_high {hi} < action_low {lo}")
            out_lo.append(lo)
            out_hi.append(hi)
        return cls(tuple(out_lo), tuple(out_hi))

    @classmethod
    def for_dims(cls, act_dim: int, low: Any = None, high: Any = None) -> BoxMapping:
        """The Box of ``act_dim`` dimensions within ``low`` .. ``high`` (see :meth:`from_bounds`)."""
        return cls.from_bounds(low, high, act_dim)

    @property
    def act_dim(self) -> int:
        """The number of action dimensions."""
        return len(self.low)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """(act_dim,): the step outputs the action in env units."""
        return (self.act_dim,)

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.scale, np.float32), np.asarray(self.offset, np.float32)

    def to_env(self, action: np.ndarray) -> np.ndarray:
        """float32 ``squashed * scale + offset``: what the graph computes."""
        scale, offset = self._affine()
        return np.asarray(action, np.float32) * scale + offset

    def encode(self, env_action: Any) -> np.ndarray:
        """The squashed action (in [-1, 1] within the bounds) of an env action; 0 where low == high."""
        scale, offset = self._affine()
        shifted = np.asarray(env_action, np.float32) - offset
        return np.divide(shifted, scale, out=np.zeros_like(shifted), where=scale != 0)

    def sample_noise(self, rng: np.random.Generator, out: np.ndarray) -> None:
        """Standard-normal noise: the step samples tanh(mean + std * noise)."""
        rng.standard_normal(out=out, dtype=np.float32)

    def read_graph_bounds(self, probe: Probe) -> tuple[np.ndarray, np.ndarray] | None:
        """Two saturated steps: with noise pushing ``mean + exp(log_std) * noise`` to +-20 or beyond, tanh is
        exactly +-1 in float32, so the graph's action is its high, then its low bound. A graph whose head is not
        finite at a zero input cannot be probed (None); its steps are caught by the non-finite action check."""
        _, mean, log_std = probe(np.float32(0.0))
        with np.errstate(over="ignore", invalid="ignore"):
            push = (np.abs(mean) + 20.0) * np.exp(-log_std)
        high = probe(push)[0].max(axis=0)
        low = probe(-push)[0].min(axis=0)
        return (low, high) if np.isfinite(high).all() and np.isfinite(low).all() else None

    def check_step_out(self, out: np.ndarray | None) -> None:
        """Any (act_dim,) float buffer will do (its type and shape are checked by the caller)."""

    def step_result(self, row: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """A copy of the action row, or the row written into ``out``."""
        if out is None:
            return row.copy()
        np.copyto(out, row, casting="same_kind")
        return out

    def out_buffer(self) -> np.ndarray:
        """A float32 (act_dim,) array."""
        return np.zeros(self.act_dim, dtype=np.float32)

    def describe(self) -> str:
        """``(act_dim,) continuous actions``."""
        return f"({self.act_dim},) continuous actions"

    def matches_kind(self, space: Any) -> bool:
        """A space without ``n`` (a Box)."""
        return not hasattr(space, "n")

    def size_mismatch(self, space: Any) -> str | None:
        """The space's shape is not (act_dim,)."""
        if space.shape != (self.act_dim,):
            return f"actions have shape {space.shape}, the model emits ({self.act_dim},)"
        return None

    def bounds_note(self, space: Any) -> str | None:
        """The env's low / high are not (close to) the policy's."""
        low, high = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        if np.allclose(space.low, low) and np.allclose(space.high, high):
            return None
        return (f"note: the model's action bounds {low.tolist()}..{high.tolist()} "
                f"differ from the env's {space.low.tolist()}..{space.high.tolist()}")

    @staticmethod
    def n_bounds(act_dim: int) -> int:
        """One bound per dimension."""
        return act_dim

    @staticmethod
    def bounds_problem(low: list[float], high: list[float], act_dim: int) -> str | None:
        """Any finite, ordered bounds are a Box's."""
        return None


@dataclass(frozen=True)
class DiscreteMapping(ActionMapping):
    """A Discrete space of ``n`` actions: the policy's one-hot action -> its index (an int)."""

    n: int
    discrete = True
    output_names = ("action", "action_logits", "action_log_probs")
    head_names = ("logits", "log_probs")
    action_dtype = "int64"

    @classmethod
    def for_dims(cls, act_dim: int, low: Any = None, high: Any = None) -> DiscreteMapping:
        """``Discrete(act_dim)``; its bounds are always the index range, so ``low`` / ``high`` are not read."""
        return cls(act_dim)

    @property
    def low(self) -> tuple[float, ...]:
        """(0,): the first index."""
        return (0.0,)

    @property
    def high(self) -> tuple[float, ...]:
        """(n - 1,): the last index."""
        return (float(self.n - 1),)

    @property
    def act_dim(self) -> int:
        """n: the one-hot action's width."""
        return self.n

    @property
    def row_shape(self) -> tuple[int, ...]:
        """(): the step outputs one int64 index per robot."""
        return ()

    def to_env(self, action: np.ndarray) -> int:
        """The index of a one-hot action."""
        return int(np.argmax(action))

    def encode(self, env_action: Any) -> np.ndarray:
        """The float32 one-hot of an action index."""
        return np.eye(self.n, dtype=np.float32)[int(env_action)]

    def sample_noise(self, rng: np.random.Generator, out: np.ndarray) -> None:
        """Standard Gumbel noise -log(-log U): argmax(logits + noise) is an exact categorical sample (U = 0 gives
        -inf: never chosen)."""
        rng.random(out=out, dtype=np.float32)
        with np.errstate(divide="ignore"):
            np.log(out, out=out)
            np.negative(out, out=out)
            np.log(out, out=out)
        np.negative(out, out=out)

    def read_graph_bounds(self, probe: Probe) -> None:
        """Nothing to read: the graph outputs indices, whose range the metadata check already fixes."""
        return None

    def check_step_out(self, out: np.ndarray | None) -> None:
        """``out=`` is refused: one robot's step returns its action index as an int."""
        if out is not None:
            raise ValueError("out= takes continuous actions; a discrete policy's step() returns an int")

    def step_result(self, row: np.ndarray, out: np.ndarray | None) -> int:
        """The action index as a Python int."""
        return int(row)

    def out_buffer(self) -> None:
        """None: steps return ints."""
        return None

    def describe(self) -> str:
        """``Discrete(n)``."""
        return f"Discrete({self.n})"

    def matches_kind(self, space: Any) -> bool:
        """A space with ``n`` (a Discrete)."""
        return hasattr(space, "n")

    def size_mismatch(self, space: Any) -> str | None:
        """The space's n is not the policy's."""
        if int(space.n) != self.n:
            return f"has {space}, the model emits {self.describe()}"
        return None

    def bounds_note(self, space: Any) -> None:
        """None: an index range has no units to differ in."""
        return None

    @staticmethod
    def n_bounds(act_dim: int) -> int:
        """One entry: the index range."""
        return 1

    @staticmethod
    def bounds_problem(low: list[float], high: list[float], act_dim: int) -> str | None:
        """The bounds must be the index range [0] .. [act_dim - 1]."""
        if low != [0] or high != [act_dim - 1]:
            return f"of a discrete policy must be [0] with action_high [{act_dim - 1}]"
        return None


# ---- metadata -------------------------------------------------------------------------------
STEPWISE_KEYS = ("obs_dim", "act_dim", "reward_as_input", "action_low", "action_high", "discrete", "task_id",
                 "encoder", "state_layout")  # what a stepwise policy says about itself (stepwise_metadata)


def stepwise_metadata(obs_dim: int, act_dim: int, reward_as_input: bool, actions: ActionMapping,
                      task_id: str | None, encoder: str, states: Sequence[tuple[str, Sequence[int]]]
                      ) -> dict[str, Any]:
    """The :data:`STEPWISE_KEYS` of a policy: dims, finite bounds, task, encoder and the full state layout."""
    values = (obs_dim, act_dim, reward_as_input, list(actions.low), list(actions.high), actions.discrete, task_id,
              encoder, [state_entry(n, s) for n, s in states])
    return dict(zip(STEPWISE_KEYS, values, strict=True))


_REEXPORT = "the file was modified after export; export it again with `resel export`"


class MetadataError(ValueError):
    """A policy file whose metadata is malformed or disagrees with its graph (the message names the key)."""


def metadata_error(source: str | Path, key: str, problem: str) -> MetadataError:
    """The one-line refusal of a policy file whose metadata ``key`` has ``problem``, with the fix."""
    return MetadataError(f"{source}: metadata key {key!r} {problem}; {_REEXPORT}")


def _is_int(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def validate_metadata(meta: Mapping[str, Any], source: str | Path,
                      graph: Mapping[str, Sequence[Any]] | None = None) -> None:
    """Check every metadata key the controller relies on, then its agreement with the graph and with each other.

    Run before any buffer is sized from the metadata, so that a tampered or truncated file fails with one line
    naming the key instead of an onnxruntime, numpy or KeyError message at the first step. ``graph`` (tensor
    name -> dims) is the graph's own view; it is checked before the keys are compared with each other, so the
    key that disagrees with the graph is the one named.
    """
    def fail(key: str, problem: str) -> MetadataError:
        return metadata_error(source, key, problem)

    for key in ("obs_dim", "act_dim"):
        if not _is_int(meta.get(key)):
            raise fail(key, f"must be a positive integer; got {meta.get(key)!r:.60}")
    obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
    for key in ("reward_as_input", "discrete"):
        if not isinstance(meta.get(key, False), bool):
            raise fail(key, f"must be true or false; got {meta.get(key)!r:.60}")
    layout = meta.get("state_layout")
    if not (isinstance(layout, list) and all(_state_entry_ok(s) for s in layout)):
        raise fail("state_layout", 'must be a list of {"name": str, "shape": ["batch", sizes...]}; '
                                   f"got {layout!r:.60}")
    names = [s["name"] for s in layout]
    if names[:2] != list(HISTORY_STATES) or len(set(names)) != len(names):
        raise fail("state_layout", f"must start with prev_obs, prev_act and name each state once; got {names}")
    for key, want in (("inputs", [*INPUT_NAMES, *(state_in(n) for n in names)]),
                      ("outputs", [None, None, None, *(state_out(n) for n in names)])):
        value = meta.get(key)
        got = [v.get("name") if isinstance(v, dict) else None for v in value] if isinstance(value, list) else None
        if got is None or len(got) != len(want) or not all(isinstance(g, str) for g in got) or any(
                w is not None and g != w for g, w in zip(got, want)):
            raise fail(key, f"must list the graph's {key} {[w or '...' for w in want]}; got {got!r:.80}")
    if graph is not None:
        check_graph_shapes(meta, graph, source)
    if layout[0]["shape"][1:] != [obs_dim] or layout[1]["shape"][1:] != [act_dim]:
        raise fail("state_layout", f"gives prev_obs {layout[0]['shape']} and prev_act {layout[1]['shape']}, which "
                                   f"disagree with obs_dim={obs_dim}, act_dim={act_dim}")
    actions = mapping_kind(meta.get("discrete", False))  # the action space the metadata declares
    n_bounds = actions.n_bounds(act_dim)
    for key in ("action_low", "action_high"):
        value = meta.get(key)
        if not (isinstance(value, list) and len(value) == n_bounds and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise fail(key, f"must be a list of {n_bounds} finite numbers; got {value!r:.60}")
    low, high = meta["action_low"], meta["action_high"]
    if any(lo > hi for lo, hi in zip(low, high)):
        raise fail("action_high", f"is below action_low somewhere ({high} < {low})")
    problem = actions.bounds_problem(low, high, act_dim)
    if problem is not None:
        raise fail("action_low", problem)


def _state_entry_ok(entry: Any) -> bool:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(shape, list)
            and len(shape) >= 1 and shape[0] == "batch" and all(_is_int(d, 0) for d in shape[1:]))


def expected_shapes(meta: Mapping[str, Any]) -> dict[str, list[int | None]]:
    """Every graph input's and state output's shape as the (validated) metadata describes it; None: the batch axis."""
    o, a = meta["obs_dim"], meta["act_dim"]
    obs, prev_reward, is_first, noise = INPUT_NAMES
    shapes: dict[str, list[int | None]] = {obs: [None, o], prev_reward: [None, 1], is_first: [None], noise: [None, a]}
    for s in meta["state_layout"]:
        shapes[state_in(s["name"])] = shapes[state_out(s["name"])] = [None, *s["shape"][1:]]
    return shapes


def check_graph_shapes(meta: Mapping[str, Any], graph: Mapping[str, Sequence[Any]], source: str | Path) -> None:
    """The graph's own tensor shapes (``graph``: name -> dims, a non-integer or negative dim is the batch axis)
    against the metadata: the graph is what runs, so a metadata key that disagrees with it is refused by name."""
    for name, want in expected_shapes(meta).items():
        got = [d if isinstance(d, int) and d >= 0 else None for d in graph.get(name, [])]
        if got == want:
            continue
        key = ("obs_dim" if name == INPUT_NAMES[0] else "act_dim" if name == INPUT_NAMES[3] else
               "state_layout" if is_state_name(name) else "inputs")
        raise metadata_error(source, key, f"gives {name} the shape {_dims(want)} but the graph's {name} is "
                                          f"{_dims(got) if name in graph else 'missing'}")


def _dims(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in dims) + ")"


def decode_metadata(props: Mapping[str, str], source: str | Path) -> dict[str, Any]:
    """Decode an ONNX file's metadata entries (JSON values) and check that it is a RESeL stepwise policy."""
    meta: dict[str, Any] = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    if meta.get("format") != FORMAT:
        raise ValueError(f"{source} is an ONNX file but not a RESeL stepwise policy (no '{FORMAT}' metadata); "
                         "export one with `resel export CKPT --format onnx`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{source} has RESeL ONNX format version {meta.get('format_version')}; "
                         f"this toolkit reads version {FORMAT_VERSION}")
    return meta


def engine_sidecar(path: Path) -> Path:
    """Where an engine's metadata lives: ``policy.engine`` -> ``policy.engine.json``."""
    return path.with_name(path.name + ".json")


def detect_kind(path: str | Path) -> str:
    """'checkpoint', 'onnx' or 'engine' for a model file; raises with what was expected otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass a model file (e.g. {path / 'checkpoint.pt'} or an .onnx file)")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return "engine"
    with path.open("rb") as f:
        head = f.read(4)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if head == CHECKPOINT_MAGIC:
        return "checkpoint"
    raise ValueError(
        f"{path}: unrecognised model file (expected a RESeL checkpoint saved by `resel train`, "
        f"an .onnx file from `resel export`, or a TensorRT engine ({'/'.join(ENGINE_SUFFIXES)}))"
    )
