"""Interchangeable step engines behind :class:`resel_deploy.Controller`: torch, onnxruntime, tensorrt.

Every backend owns preallocated host buffers (:class:`HostBuffers`) that the controller fills and
reads; ``run()`` performs one step for the whole batch: it reads ``obs``, ``prev_reward``,
``is_first`` and ``noise``, writes ``action``, ``mean`` and ``log_std``, and advances the
recurrent state it keeps internally. For Discrete-action policies (``meta["discrete"]``) ``action``
is an int64 (batch,) buffer and ``mean`` / ``log_std`` hold the logits and log-probs. State
buffers are ping-ponged: the step reads one set and writes the other (never the same memory), and
the roles swap after every step.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from resel_deploy.artifacts import validate_metadata
from resel_deploy.extras import install_hint

TRT_INSTALL_HINT = install_hint("tensorrt")


@dataclass
class HostBuffers:
    """The controller-facing buffers of one batch (allocated once); float32 but a discrete action (int64)."""

    obs: np.ndarray  # (batch, obs_dim)
    prev_reward: np.ndarray  # (batch, 1)
    is_first: np.ndarray  # (batch,)
    noise: np.ndarray  # (batch, act_dim); Gumbel noise for a discrete policy
    action: np.ndarray  # (batch, act_dim); discrete: (batch,) int64
    mean: np.ndarray  # (batch, act_dim); discrete: the logits
    log_std: np.ndarray  # (batch, act_dim); discrete: the log-probs

    @classmethod
    def numpy(cls, batch: int, obs_dim: int, act_dim: int, discrete: bool = False) -> HostBuffers:
        z = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
        action = np.zeros(batch, np.int64) if discrete else z(batch, act_dim)
        return cls(z(batch, obs_dim), z(batch, 1), z(batch), z(batch, act_dim), action, z(batch, act_dim),
                   z(batch, act_dim))

    def inputs(self) -> tuple[np.ndarray, ...]:
        return self.obs, self.prev_reward, self.is_first, self.noise

    def outputs(self) -> tuple[np.ndarray, ...]:
        return self.action, self.mean, self.log_std


def state_shapes(meta: dict[str, Any], batch: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(s["name"], (batch, *s["shape"][1:])) for s in meta["state_layout"]]


class Backend:
    """Interface; see the module docstring."""

    name = "base"
    host: HostBuffers

    def run(self) -> None:
        raise NotImplementedError

    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of the current state tensors, by name (not for the real-time path)."""
        raise NotImplementedError

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def zero_state(self) -> None:
        self.set_state({k: np.zeros_like(v) for k, v in self.get_state().items()})


# ---- torch ----------------------------------------------------------------------------------
class TorchBackend(Backend):
    """Eager torch on the StepwisePolicy (the reference). Inputs are zero-copy views of the host buffers."""

    name = "torch"

    def __init__(self, stepwise, batch: int, device: str | None = None) -> None:
        import torch

        self.torch = torch
        self.module = stepwise.eval()
        self.device = torch.device(device or "cpu")
        self.module.to(self.device)
        self.host = HostBuffers.numpy(batch, stepwise.obs_dim, stepwise.act_dim, stepwise.discrete)
        self.names = stepwise.state_names()
        if self.device.type == "cpu":
            self._in = [torch.from_numpy(a) for a in self.host.inputs()]
        else:
            self._in = [torch.empty(a.shape, device=self.device) for a in self.host.inputs()]
        self._host_in = [torch.from_numpy(a) for a in self.host.inputs()]
        self._out = [torch.from_numpy(a) for a in self.host.outputs()]
        self.state = stepwise.initial_state(batch, device=self.device)

    def run(self) -> None:
        torch = self.torch
        with torch.inference_mode():
            if self.device.type != "cpu":
                for dst, src in zip(self._in, self._host_in, strict=False):
                    dst.copy_(src, non_blocking=True)
            out = self.module(*self._in, *self.state)
            for dst, src in zip(self._out, out[:3], strict=False):
                dst.copy_(src)
        self.state = out[3:]

    def get_state(self) -> dict[str, np.ndarray]:
        return {n: t.detach().cpu().numpy().copy() for n, t in zip(self.names, self.state, strict=False)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.state = tuple(
            self.torch.as_tensor(np.asarray(state[n], np.float32), device=self.device).clone() for n in self.names
        )


# ---- onnxruntime ----------------------------------------------------------------------------
class OnnxRuntimeBackend(Backend):
    """onnxruntime with I/O binding onto preallocated numpy buffers; two bindings (A->B, B->A) for the state.

    Defaults for a control loop: 1 intra-op and 1 inter-op thread (the step runs on the caller's
    thread; the default pool would contend with the loop), sequential execution, all graph
    optimisations, and denormals flushed to zero -- exp(dt * A) below ~1e-38 and decaying states
    otherwise hit the CPU's slow denormal path (measured here: exp over the 512 x 64 state takes
    ~170 us instead of ~12 us when its results are denormal). onnxruntime sets FTZ/DAZ once, on the
    thread that creates the session, and only there: :class:`~resel_deploy.Controller` also sets it
    itself and offers ``prepare_thread()`` for a control thread other than the loading one.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: bytes | str,
        meta: dict[str, Any],
        batch: int,
        threads: int = 1,
        inter_threads: int = 1,
        flush_denormals: bool = True,
        providers: list[str] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(f"backend='onnxruntime' needs onnxruntime: {install_hint('deploy')}") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = inter_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if flush_denormals:
            opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        self.session = ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])
        self.host = HostBuffers.numpy(batch, meta["obs_dim"], meta["act_dim"], bool(meta.get("discrete", False)))
        self.names = [n for n, _ in state_shapes(meta, batch)]
        self._output_names = [o["name"] for o in meta["outputs"][:3]]
        self._check_io(meta)
        self._state = [
            [np.zeros(shape, np.float32) for _, shape in state_shapes(meta, batch)] for _ in range(2)
        ]
        self._bindings = [self._bind(self._state[i], self._state[1 - i]) for i in range(2)]
        self._cur = 0

    def _check_io(self, meta: dict[str, Any]) -> None:
        got = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        want = [i["name"] for i in meta["inputs"]], [o["name"] for o in meta["outputs"]]
        if got != want:
            raise ValueError(f"ONNX graph I/O {got} does not match its metadata {want}")

    def _bind(self, state_in: list[np.ndarray], state_out: list[np.ndarray]):
        binding = self.session.io_binding()
        ins = list(zip(("obs", "prev_reward", "is_first", "noise"), self.host.inputs(), strict=False))
        ins += [("state_in." + n, a) for n, a in zip(self.names, state_in, strict=False)]
        outs = list(zip(self._output_names, self.host.outputs(), strict=False))
        outs += [("state_out." + n, a) for n, a in zip(self.names, state_out, strict=False)]
        for name, a in ins:
            binding.bind_input(name, "cpu", 0, np.float32, list(a.shape), a.ctypes.data)
        for name, a in outs:
            binding.bind_output(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        return binding

    def run(self) -> None:
        self.session.run_with_iobinding(self._bindings[self._cur])
        self._cur ^= 1

    def get_state(self) -> dict[str, np.ndarray]:
        return {n: a.copy() for n, a in zip(self.names, self._state[self._cur], strict=False)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        for n, a in zip(self.names, self._state[self._cur], strict=False):
            np.copyto(a, np.asarray(state[n], np.float32))


# ---- tensorrt -------------------------------------------------------------------------------
def tensorrt_unavailable_reason() -> str | None:
    """None when the TensorRT backend can run here, else a one-line reason naming what to install."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed: {TRT_INSTALL_HINT}"
    try:
        import torch
    except ImportError:
        return f"the TensorRT backend uses torch for CUDA buffers: {TRT_INSTALL_HINT}"
    if not torch.cuda.is_available():
        return f"TensorRT needs an NVIDIA GPU, and torch {torch.__version__} sees none: {TRT_INSTALL_HINT}"
    return None


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a GPU is missing (the message says what to install)."""


def require_tensorrt():
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise TensorRTUnavailable(reason)
    import tensorrt

    return tensorrt


class TensorRTBackend(Backend):
    """A TensorRT engine with device buffers from torch, pinned host buffers and ping-pong state.

    Each step: copy the four inputs host -> device, enqueue the engine reading state set A and
    writing set B, copy the action back, synchronise, swap A/B. With ``cuda_graphs`` (default) the
    whole sequence is captured once per direction (CUDA graphs need fixed addresses, hence two
    graphs) and each step is one graph launch; if capture fails the eager path is used.
    """

    name = "tensorrt"

    def __init__(self, engine_bytes: bytes, meta: dict[str, Any], batch: int, cuda_graphs: bool = True,
                 source: str = "the TensorRT engine") -> None:
        trt = require_tensorrt()
        import torch

        self.torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ValueError(
                f"TensorRT could not deserialize the engine (built with TensorRT {meta.get('tensorrt_version')}, "
                f"this is {trt.__version__}; engines only load in the TensorRT version and GPU they were built for)"
            )
        engine = self.engine
        validate_metadata(meta, source, {n: list(engine.get_tensor_shape(n)) for n in
                                         (engine.get_tensor_name(i) for i in range(engine.num_io_tensors))})
        self.context = self.engine.create_execution_context()
        self.names = [n for n, _ in state_shapes(meta, batch)]
        dev = torch.device("cuda")
        obs_dim, act_dim = meta["obs_dim"], meta["act_dim"]
        self._output_names = [o["name"] for o in meta["outputs"][:3]]
        pinned = lambda *s, dtype=torch.float32: torch.zeros(s, dtype=dtype, pin_memory=True)  # noqa: E731
        h_in = [pinned(batch, obs_dim), pinned(batch, 1), pinned(batch), pinned(batch, act_dim)]
        action = pinned(batch, dtype=torch.int64) if meta.get("discrete") else pinned(batch, act_dim)
        h_out = [action, pinned(batch, act_dim), pinned(batch, act_dim)]
        self.host = HostBuffers(*(t.numpy() for t in h_in + h_out))
        self._h_in, self._h_out = h_in, h_out
        self._d_in = [torch.zeros_like(t, device=dev) for t in h_in]
        self._d_out = [torch.zeros_like(t, device=dev) for t in h_out]
        self._d_state = [
            [torch.zeros(shape, dtype=torch.float32, device=dev) for _, shape in state_shapes(meta, batch)]
            for _ in range(2)
        ]
        self.stream = torch.cuda.Stream()
        in_names = ["obs", "prev_reward", "is_first", "noise"]
        for name, t in zip(in_names, self._d_in, strict=False):
            self.context.set_input_shape(name, tuple(t.shape))
        for n, t in zip(self.names, self._d_state[0], strict=False):
            self.context.set_input_shape("state_in." + n, tuple(t.shape))
        self._addresses = [self._address_map(i) for i in range(2)]
        self._cur = 0
        self._graphs = None
        if cuda_graphs:
            try:
                self._graphs = [self._capture(i) for i in range(2)]
            except Exception:  # capture unsupported here: stay on the eager path
                self._graphs = None

    def _address_map(self, i: int) -> list[tuple[str, int]]:
        names = ["obs", "prev_reward", "is_first", "noise"]
        pairs = [(n, t.data_ptr()) for n, t in zip(names, self._d_in, strict=False)]
        pairs += [(n, t.data_ptr()) for n, t in zip(self._output_names, self._d_out, strict=False)]
        pairs += [("state_in." + n, t.data_ptr()) for n, t in zip(self.names, self._d_state[i], strict=False)]
        pairs += [("state_out." + n, t.data_ptr()) for n, t in zip(self.names, self._d_state[1 - i], strict=False)]
        return pairs

    def _enqueue(self, i: int) -> None:
        for name, ptr in self._addresses[i]:
            self.context.set_tensor_address(name, ptr)
        for dst, src in zip(self._d_in, self._h_in, strict=False):
            dst.copy_(src, non_blocking=True)
        if not self.context.execute_async_v3(self.torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for dst, src in zip(self._h_out, self._d_out, strict=False):
            dst.copy_(src, non_blocking=True)

    def _capture(self, i: int):
        torch = self.torch
        with torch.cuda.stream(self.stream):
            self._enqueue(i)  # warm-up enqueue before capture (lazy init inside TensorRT)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._enqueue(i)
        return graph

    def run(self) -> None:
        if self._graphs is not None:
            self._graphs[self._cur].replay()
            self.torch.cuda.current_stream().synchronize()
        else:
            with self.torch.cuda.stream(self.stream):
                self._enqueue(self._cur)
            self.stream.synchronize()
        self._cur ^= 1

    def get_state(self) -> dict[str, np.ndarray]:
        return {n: t.cpu().numpy().copy() for n, t in zip(self.names, self._d_state[self._cur], strict=False)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        for n, t in zip(self.names, self._d_state[self._cur], strict=False):
            t.copy_(self.torch.as_tensor(np.asarray(state[n], np.float32)))
