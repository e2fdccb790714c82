"""``Controller``: the one object a robot's control loop embeds.

    ctrl = Controller.load("policy.onnx")          # or a checkpoint, or a TensorRT engine
    ctrl.reset()                                   # a new episode starts at the next step
    while running:
        action = ctrl.step(read_sensors(), reward)  # numpy in, numpy out (env units)
        write_actuators(action)

- ``step(obs, reward=0.0, out=None)``: one robot. ``reward`` is the reward the environment gave for
  the *previous* action (r_{t-1}); it is used only by tasks that feed rewards to the policy and is
  ignored at an episode's first step (None counts as 0.0, as in ``step_batch``). Returns the action
  rescaled to the action bounds; with ``out=`` (a float32/float64 array of shape (act_dim,)) it is
  written there and nothing at all is allocated, otherwise a new small array is returned.
- ``step_batch(obs, rewards=None, is_first=None, out=None)``: ``batch`` robots at once, each with its
  own state; ``is_first`` (bool per robot) starts new episodes for some robots only.
- ``reset(rows=None)``: the next step of all (or the given) robots is the first of an episode
  (previous obs/action/reward and the recurrent memory are treated as zeros).

The controller preallocates every buffer at load (inputs, outputs, two state sets) and a step
copies the observation into its input buffer, runs the backend, and copies the action out.
Discrete-action policies (Key-to-Door; ``controller.discrete``): ``step`` returns the action index
as a Python ``int`` and ``step_batch`` an int64 (batch,) array, on every backend; deterministic is
the greedy (argmax) action, ``stochastic=True`` samples it exactly (Gumbel-max noise). What differs
between the two kinds of action space is the policy's action mapping (``controller.actions``, a
:class:`~resel_deploy.contract.ActionMapping` chosen once from the metadata).
Deterministic actions (tanh of the mean) by default; ``stochastic=True, seed=...`` samples
tanh(mean + std * noise) with noise from a seeded numpy generator written into a preallocated
buffer. Inputs are validated every step: a wrong type or shape names the argument and the expected
shape, NaN/inf raises.

Outputs are checked too, whatever the backend: a non-finite action is never returned. By default
the step raises :class:`NonFiniteAction`; with ``safe_action=`` (an action in env units, within
the bounds) given to :meth:`Controller.load`, the affected robots get that action instead and
``nonfinite_steps`` counts it. Either way the recurrent state of those robots is zeroed (a reset:
NaN state would otherwise poison every later step).

Threads: every public method holds the controller's lock, so calls from several threads are serialised and
each returned action is the one a sequential run of the same calls would give (the lock costs well under a
microsecond and allocates nothing). A controller carries one recurrent state per robot, so two threads
stepping the same robot interleave two streams into one episode: give each stream its own controller or
batch row.

Action bounds: the graph applies them itself (they are compiled in); the metadata's ``action_low`` /
``action_high`` describe them, and :meth:`Controller.load` reads the bounds back out of the graph (two
saturated steps) and refuses a file whose metadata disagrees, naming the key.

Real-time notes: onnxruntime runs with one intra-op and one inter-op thread (the step runs on the
caller's thread); denormals are flushed to zero on the loading thread (call ``prepare_thread()``
first thing on a different control thread); for the torch backend call
``torch.set_num_threads(1)`` (or pass ``threads=1``).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from resel_deploy import bridge
from resel_deploy.artifacts import read_onnx_metadata
from resel_deploy.backends import Backend, OnnxRuntimeBackend
from resel_deploy.contract import ENGINE_SUFFIXES, ActionMapping, detect_kind, metadata_error

BACKENDS = ("onnxruntime", "torch", "tensorrt")
__all__ = ["BACKENDS", "ENGINE_SUFFIXES", "Controller", "NonFiniteAction", "checked_safe_action", "detect_kind"]


class NonFiniteAction(RuntimeError):
    """The backend produced NaN/inf actions; they were not returned (see the module docstring)."""


class Controller:
    """Stepwise recurrent controller with interchangeable backends (see the module docstring)."""

    def __init__(
        self, backend: Backend, meta: dict[str, Any], batch: int = 1, stochastic: bool = False,
        seed: int | None = None, warmup: int = 3, safe_action: Any = None,
    ) -> None:
        self._backend = backend
        self.metadata = dict(meta)
        self.obs_dim: int = int(meta["obs_dim"])
        self.act_dim: int = int(meta["act_dim"])
        self.batch: int = int(batch)
        self.reward_as_input: bool = bool(meta.get("reward_as_input", False))
        self.task_id: str | None = meta.get("task_id")
        self.action_low = np.asarray(meta["action_low"], dtype=np.float32)
        self.action_high = np.asarray(meta["action_high"], dtype=np.float32)
        self.state_names: list[str] = [s["name"] for s in meta["state_layout"]]
        self.actions = ActionMapping.from_meta(meta)
        self.discrete: bool = self.actions.discrete
        self.stochastic = bool(stochastic)
        self._rng = np.random.default_rng(seed)
        h = backend.host
        self._h = h
        self._obs_row, self._act_row = h.obs[0], h.action[0, ...]  # views: one robot's row (a 0-d index)
        self._obs_flat = h.obs.reshape(-1)
        self._zeros = np.zeros(self._obs_flat.shape, np.float32)
        self._zeros_batch = np.zeros(self.batch, np.float32)
        self._rew_flat = h.prev_reward.reshape(-1)
        self._act_flat = h.action.reshape(-1)
        self._zeros_act = np.zeros(self._act_flat.shape, np.float32)
        self._lock = threading.Lock()
        self.nonfinite_steps = 0
        for _ in range(max(0, warmup)):  # fault in pages and runtime arenas before the first real step
            h.is_first.fill(1.0)
            backend.run()
        self._check_bounds_against_graph()
        self.safe_action = None if safe_action is None else checked_safe_action(safe_action, self.action_low,
                                                                                 self.action_high)
        backend.set_state({k: np.zeros_like(v) for k, v in backend.get_state().items()})
        h.obs.fill(0.0)
        h.prev_reward.fill(0.0)
        h.is_first.fill(1.0)
        self.steps = 0

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "onnxruntime",
        batch: int = 1,
        stochastic: bool = False,
        seed: int | None = None,
        threads: int | None = None,
        flush_denormals: bool = True,
        device: str | None = None,
        warmup: int = 3,
        safe_action: Any = None,
    ) -> Controller:
        """Load a checkpoint, an .onnx file or a TensorRT engine for ``batch`` robots.

        ``backend``: "onnxruntime" (default; a checkpoint is exported to ONNX in memory first, with
        the same parity check as ``resel export``), "torch" (checkpoints only; ``device`` picks
        cpu/cuda) or "tensorrt" (an engine, or an ONNX file / checkpoint that is built into an
        engine in memory; needs tensorrt and a GPU). ``threads``: onnxruntime intra-op threads
        (default 1; inter-op is always 1); for the torch backend, when given, it calls
        ``torch.set_num_threads(threads)`` (process-wide; by default torch's setting is left alone --
        set it to 1 for a control loop). ``flush_denormals``: flush denormals to zero on the
        stepping thread (FTZ/DAZ; both runtimes set it thread-wide, so other float math on that
        thread flushes too; see backends.py for why a control loop wants it). ``safe_action``: what
        to return instead of a non-finite action (default: raise :class:`NonFiniteAction`).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        if flush_denormals:
            _flush_denormals_on_this_thread()
        if batch < 1:
            raise ValueError(f"batch must be >= 1; got {batch}")
        kind = detect_kind(path)
        path = Path(path)
        impl: Backend
        if backend == "torch":
            if kind != "checkpoint":
                raise ValueError(f"backend='torch' runs checkpoints; {path} is an {kind} file "
                                 "(use backend='onnxruntime' for .onnx, 'tensorrt' for engines)")
            impl, meta = bridge.torch_backend(path, batch, device, threads)
        elif backend == "onnxruntime":
            if kind == "engine":
                raise ValueError(f"{path} is a TensorRT engine; load it with backend='tensorrt'")
            model, meta = _onnx_model(path, kind)
            impl = OnnxRuntimeBackend(model, meta, batch, threads=threads or 1, flush_denormals=flush_denormals)
        else:
            bridge.require_tensorrt()
            model, meta = (None, {}) if kind == "engine" else _onnx_model(path, kind)
            impl, meta = bridge.tensorrt_backend(path, kind, model, meta, batch)
        meta = {**meta, "source": str(path), "source_kind": kind}
        return cls(impl, meta, batch=batch, stochastic=stochastic, seed=seed, warmup=warmup, safe_action=safe_action)

    @property
    def backend(self) -> str:
        """The name of the engine that runs the step: "onnxruntime", "torch" or "tensorrt"."""
        return self._backend.name

    def prepare_thread(self) -> None:
        """Call once at the start of the thread that will step the controller, if it is not the loading thread.

        Sets flush-to-zero / denormals-are-zero on the calling thread (the CPU flag is per thread;
        onnxruntime sets it only on the thread that created the session), so decaying recurrent
        states and tiny exp(dt * A) values never take the CPU's slow denormal path.
        """
        _flush_denormals_on_this_thread()

    def _check_bounds_against_graph(self) -> None:
        """Read the action bounds out of the graph (as the action mapping knows how) and refuse metadata that
        says otherwise."""
        bounds = self.actions.read_graph_bounds(self._probe)
        self._h.noise.fill(0.0)
        self._h.is_first.fill(1.0)
        if bounds is None:
            return
        low, high = bounds
        source = self.metadata.get("source", "the policy")
        for key, graph, meta in (("action_low", low, self.action_low), ("action_high", high, self.action_high)):
            if not np.allclose(graph, meta, rtol=1e-5, atol=1e-6):
                raise metadata_error(source, key, f"says {meta.tolist()} but the graph, which applies the bounds "
                                                  f"itself, acts within {low.tolist()} .. {high.tolist()}")

    def _probe(self, noise: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One first step at a zero observation and reward with ``noise``: the (action, head a, head b) buffers."""
        h = self._h
        h.obs.fill(0.0)
        h.prev_reward.fill(0.0)
        np.copyto(h.noise, noise)
        h.is_first.fill(1.0)
        self._backend.run()
        return h.action, h.mean, h.log_std

    # ---- stepping -----------------------------------------------------------------------------
    def reset(self, rows=None) -> None:
        """Start a new episode at the next step for every robot, or only for ``rows`` (indices or a bool mask)."""
        with self._lock:
            if rows is None:
                self._h.is_first.fill(1.0)
            else:
                self._h.is_first[self._rows(rows)] = 1.0

    def _rows(self, rows: Any) -> np.ndarray:
        """``rows`` as valid robot indices (a (batch,) bool mask or integers in 0..batch-1), or a ValueError."""
        r = np.asarray(rows)
        if r.dtype == bool and r.shape == (self.batch,):
            return np.flatnonzero(r)
        if r.size == 0 or (r.dtype.kind in "iu" and r.ndim <= 1 and ((r >= 0) & (r < self.batch)).all()):
            return r.reshape(-1).astype(np.intp)
        raise ValueError(f"rows must be robot indices in 0..{self.batch - 1} or a ({self.batch},) bool mask; "
                         f"got {rows!r:.60}")

    def step(self, obs, reward: float = 0.0, out: np.ndarray | None = None) -> np.ndarray | int:
        """One robot: observation (obs_dim,) and previous reward -> action (act_dim,) in env units.

        A discrete policy returns the action index (``int``; ``out`` is for continuous actions only).
        """
        with self._lock:
            return self._step(obs, reward, out)

    def _step(self, obs, reward: float, out: np.ndarray | None) -> np.ndarray | int:
        if self.batch != 1:
            raise ValueError(f"step() is for one robot; this controller was loaded with batch={self.batch}: "
                             "use step_batch()")
        obs = _numeric("obs", obs, f"({self.obs_dim},)")
        if obs.shape != (self.obs_dim,) and obs.shape != (1, self.obs_dim):
            raise ValueError(f"obs must have shape ({self.obs_dim},); got {obs.shape}")
        np.copyto(self._obs_row, obs.reshape(self.obs_dim) if obs.ndim == 2 else obs, casting="same_kind")
        self._check_obs()
        if reward is None:
            reward = 0.0
        elif not isinstance(reward, (int, float, np.integer, np.floating)) or isinstance(reward, bool):
            raise TypeError(f"reward must be a number (the previous step's reward) or None; got {reward!r}")
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite; got {reward}")
        self._check_out(out, (self.act_dim,))
        self._rew_flat[0] = reward
        self.actions.check_step_out(out)
        self._run()
        return self.actions.step_result(self._act_row, out)

    def step_batch(self, obs, rewards=None, is_first=None, out: np.ndarray | None = None) -> np.ndarray:
        """``batch`` robots: obs (batch, obs_dim), rewards (batch,) or scalar, is_first (batch,) bool.

        ``is_first`` adds to episode starts requested with :meth:`reset`. Returns (batch, act_dim)
        (discrete: (batch,) int64 indices), written into ``out`` when given.
        """
        with self._lock:
            return self._step_batch(obs, rewards, is_first, out)

    def _step_batch(self, obs, rewards, is_first, out: np.ndarray | None) -> np.ndarray:
        obs = _numeric("obs", obs, f"({self.batch}, {self.obs_dim})")
        self._check_out(out, (self.batch, self.act_dim))
        if obs.shape != (self.batch, self.obs_dim):
            raise ValueError(f"obs must have shape ({self.batch}, {self.obs_dim}) = (batch, obs_dim); got {obs.shape}")
        np.copyto(self._h.obs, obs, casting="same_kind")
        self._check_obs()
        if rewards is None:
            self._rew_flat.fill(0.0)
        else:
            r = _numeric("rewards", rewards, f"({self.batch},) or a scalar")
            if r.ndim == 0:
                self._rew_flat.fill(float(r))
            elif r.shape in ((self.batch,), (self.batch, 1)):
                np.copyto(self._rew_flat, r.reshape(self.batch), casting="same_kind")
            else:
                raise ValueError(f"rewards must be a scalar or have shape ({self.batch},); got {r.shape}")
            if not math.isfinite(float(np.dot(self._rew_flat, self._zeros_batch))):
                raise ValueError(f"rewards must be finite; got {self._rew_flat.tolist()}")
        if is_first is not None:
            f = np.asarray(is_first)
            if f.shape != (self.batch,):
                raise ValueError(f"is_first must have shape ({self.batch},); got {f.shape}")
            np.maximum(self._h.is_first, f, out=self._h.is_first, casting="unsafe")
        self._run()
        if out is None:
            return self._h.action.copy()
        np.copyto(out, self._h.action, casting="same_kind")
        return out

    def _check_obs(self) -> None:
        # dot with zeros is 0 for finite inputs and NaN for any NaN/inf, without a temporary array
        if not math.isfinite(float(np.dot(self._obs_flat, self._zeros))):
            bad = np.argwhere(~np.isfinite(self._h.obs))
            raise ValueError(f"obs contains NaN or inf at (robot, index) {bad[:5].tolist()}; refusing to act on it")

    @staticmethod
    def _check_out(out: np.ndarray | None, shape: tuple[int, ...]) -> None:
        if out is None:
            return
        if not isinstance(out, np.ndarray) or out.dtype not in (np.float32, np.float64):
            got = f"{type(out).__name__} of {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise TypeError(f"out must be a float32/float64 numpy array of shape {shape}; got {got}")
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}; got {out.shape}")

    def _run(self) -> None:
        h = self._h
        if self.stochastic:
            self.actions.sample_noise(self._rng, h.noise)
        self._backend.run()
        h.is_first.fill(0.0)
        self.steps += 1
        if not math.isfinite(float(np.dot(self._act_flat, self._zeros_act))):
            self._nonfinite_action()

    def _nonfinite_action(self) -> None:
        """Never hand a NaN/inf action out: reset the robots concerned, then raise or use ``safe_action``."""
        h = self._h
        rows = np.unique(np.argwhere(~np.isfinite(h.action))[:, 0])
        state = self._backend.get_state()
        for value in state.values():
            value[rows] = 0.0
        self._backend.set_state(state)
        h.is_first[rows] = 1.0
        if self.safe_action is None:
            raise NonFiniteAction(
                f"the {self.backend} backend produced a non-finite action for robot(s) {rows.tolist()} at step "
                f"{self.steps}; it was not returned and their state was reset. The model's weights or inputs are "
                "out of range; pass safe_action=... to Controller.load to act safely instead of raising"
            )
        h.action[rows] = self.safe_action
        self.nonfinite_steps += 1

    # ---- inspection ---------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of the recurrent state after the last step (names as in ``state_names``)."""
        with self._lock:
            return self._backend.get_state()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the recurrent state (names as in ``state_names``), e.g. to restore one read with get_state."""
        with self._lock:
            self._backend.set_state(state)

    def last_output(self) -> dict[str, np.ndarray]:
        """Copies of the last step's action, Gaussian mean and log-std (batch, act_dim); discrete: logits, log_probs."""
        h = self._h
        a, b = self.actions.head_names
        with self._lock:
            return {"action": h.action.copy(), a: h.mean.copy(), b: h.log_std.copy()}

    def __repr__(self) -> str:
        return (f"Controller(backend={self.backend!r}, obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
                f"batch={self.batch}, task={self.task_id!r}, state={self.state_names})")


def checked_safe_action(safe_action: Any, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``safe_action`` as a float32 (act_dim,) array, refused unless finite and within [low, high]: the action
    that replaces a non-finite one must itself be one the actuators accept."""
    act_dim = len(low)
    a = _numeric("safe_action", safe_action, f"({act_dim},)").astype(np.float32)
    try:
        a = np.broadcast_to(a, (act_dim,)).copy()
    except ValueError:
        raise ValueError(f"safe_action must be a scalar or have shape ({act_dim},); got {a.shape}") from None
    if not (np.isfinite(a).all() and (a >= low).all() and (a <= high).all()):
        raise ValueError(f"safe_action must be finite and within the action bounds {np.asarray(low).tolist()} .. "
                         f"{np.asarray(high).tolist()}; got {a.tolist()}")
    return a


def _numeric(name: str, value: Any, shape: str) -> np.ndarray:
    """``value`` as a numeric numpy array, or a TypeError that names the argument."""
    arr = np.asarray(value) if value is not None else None
    if arr is None or arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a numeric array of shape {shape}; got {type(value).__name__} {value!r:.60}")
    return arr


def _flush_denormals_on_this_thread() -> None:
    bridge.flush_denormals_on_this_thread()


def _onnx_model(path: Path, kind: str) -> tuple[bytes, dict[str, Any]]:
    """ONNX bytes and metadata from an .onnx file, or from a checkpoint exported in memory (checked)."""
    if kind == "onnx":  # numpy + onnxruntime only: what a robot without the training stack runs
        data = path.read_bytes()
        return data, read_onnx_metadata(data, path)
    return bridge.onnx_from_checkpoint(path)  # a training artifact: the exporter runs on the torch side
