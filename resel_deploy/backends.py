"""The step engines behind :class:`resel_deploy.Controller` that need no torch: the interface and onnxruntime.

Every backend owns preallocated host buffers (:class:`~resel_deploy.contract.HostBuffers`) that the controller
fills and reads; ``run()`` performs one step for the whole batch: it reads ``obs``, ``prev_reward``,
``is_first`` and ``noise``, writes ``action``, ``mean`` and ``log_std``, and advances the
recurrent state it keeps internally. The ``action`` buffer is the policy's action mapping's
(:class:`~resel_deploy.contract.ActionMapping`): for a Discrete space an int64 (batch,) buffer, with
``mean`` / ``log_std`` holding the logits and log-probs. State
buffers are ping-ponged: the step reads one set and writes the other (never the same memory), and
the roles swap after every step.

The torch backend and the TensorRT backend (whose CUDA buffers are torch tensors) are reached through
:mod:`resel_deploy.bridge`, the one module of this package that touches the torch side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resel_deploy.contract import INPUT_NAMES, ActionMapping, HostBuffers, state_in, state_out, state_shapes
from resel_deploy.extras import install_hint


class Backend:
    """Interface; see the module docstring."""

    name = "base"
    host: HostBuffers

    def run(self) -> None:
        """One step of the whole batch: read the host inputs and the state, write the host outputs and the new state."""
        raise NotImplementedError

    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of the current state tensors, by name (not for the real-time path)."""
        raise NotImplementedError

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the current state tensors (by name) with copies of ``state``."""
        raise NotImplementedError


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
        self.host = HostBuffers.numpy(batch, meta["obs_dim"], ActionMapping.from_meta(meta))
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

    def _bind(self, states_in: list[np.ndarray], states_out: list[np.ndarray]):
        binding = self.session.io_binding()
        ins = list(zip(INPUT_NAMES, self.host.inputs(), strict=True))
        ins += [(state_in(n), a) for n, a in zip(self.names, states_in, strict=True)]
        outs = list(zip(self._output_names, self.host.outputs(), strict=True))
        outs += [(state_out(n), a) for n, a in zip(self.names, states_out, strict=True)]
        for name, a in ins:
            binding.bind_input(name, "cpu", 0, np.float32, list(a.shape), a.ctypes.data)
        for name, a in outs:
            binding.bind_output(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        return binding

    def run(self) -> None:
        """One step with the binding of the current state set (A->B or B->A), then swap the sets."""
        self.session.run_with_iobinding(self._bindings[self._cur])
        self._cur ^= 1

    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of the state set the next step reads."""
        return {n: a.copy() for n, a in zip(self.names, self._state[self._cur], strict=False)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` into the state set the next step reads."""
        for n, a in zip(self.names, self._state[self._cur], strict=False):
            np.copyto(a, np.asarray(state[n], np.float32))
