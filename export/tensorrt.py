"""Build a TensorRT engine from the stepwise ONNX graph (fp32, or fp16 with fp32 state math).

    build_engine("policy.onnx")               -> policy.engine       (fp32, TF32 off)
    build_engine("ckpt.pt", fp16=True)        -> ckpt.fp16.engine    (exports ckpt.fp16.onnx first)

Needs the ``tensorrt`` Python package (>= 10) and an NVIDIA GPU with a CUDA build of torch (torch
provides the device buffers at run time); without them every entry point raises
:class:`TensorRTUnavailable` with a one-line message naming what to install.

Precision. TensorRT 10 deprecated and TensorRT 11 removed the builder's FP16 flag: precision comes
from the graph (a *strongly typed* network). fp16 therefore uses the ONNX graph from
:func:`resel.export.onnx.to_mixed_fp16`: weight matrix products in float16 between Cast nodes, while
softplus, exp(dt * A), the state update and the state tensors stay float32 -- in float16,
exp(dt * A) rounds to exactly 1 for dt ~ 1e-4 and the SSM would stop forgetting. fp32 engines are
built with TF32 disabled so they match the torch reference to float32 rounding.

Engine file: the raw TensorRT plan (loadable by ``trtexec --loadEngine``) plus a JSON sidecar
``<engine>.json`` holding the same metadata as the ONNX file, the TensorRT version, the batch
range of the optimisation profile and the measured engine-vs-onnxruntime error. Engines only load
with the TensorRT version and GPU model they were built for.

Running: :class:`TensorRTBackend` (what ``Controller.load(path, backend="tensorrt")`` steps, through
:mod:`resel_deploy.bridge`: its CUDA buffers are torch tensors, so it lives on the torch side) binds separate
input and output state buffers (ping-pong; TensorRT must not read and write the same state memory in one step)
and by default captures one CUDA graph per direction.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from resel_deploy.contract import (
    ENGINE_FORMAT,
    INPUT_NAMES,
    ActionMapping,
    HostBuffers,
    detect_kind,
    engine_sidecar,
    state_in,
    state_out,
    state_shapes,
    validate_metadata,
)
from resel_deploy.extras import install_hint
from resel_train.persist.atomic import atomic_write

__all__ = ["TensorRTBackend", "TensorRTUnavailable", "build_engine", "build_engine_bytes", "require_tensorrt",
           "tensorrt_unavailable_reason"]
TRT_INSTALL_HINT = install_hint("tensorrt")


def build_engine(
    onnx_or_checkpoint: str | Path,
    out: str | Path | None = None,
    fp16: bool = False,
    max_batch: int = 64,
    opt_batch: int = 1,
    workspace_mb: int = 1024,
    verify_steps: int = 100,
) -> Path:
    """Build and write a TensorRT engine; returns its path.

    ``onnx_or_checkpoint``: an .onnx file from ``export_onnx`` or a checkpoint (exported to
    ``<checkpoint>.onnx`` / ``.fp16.onnx`` first, parity-checked). ``out``: default the ONNX path
    with suffix ``.engine`` (``.fp16.engine`` for fp16 from an fp32 graph). ``max_batch`` /
    ``opt_batch``: the optimisation profile's batch range (min 1). After building, the engine is
    run for ``verify_steps`` steps at batch 1 and 7 against onnxruntime on the same graph and
    the error is stored in the sidecar (0 skips the check).
    """
    require_tensorrt()  # fail fast, before any export work
    from resel.export.onnx import export_onnx, read_metadata, to_mixed_fp16

    src = Path(onnx_or_checkpoint)
    kind = detect_kind(src)
    if kind == "engine":
        raise ValueError(f"{src} is already a TensorRT engine")
    if kind == "checkpoint":
        report = export_onnx(src, fp16=fp16)
        onnx_path = report.path
    else:
        onnx_path = src
    import onnx

    model = onnx.load(str(onnx_path))
    meta = read_metadata(model)
    if fp16 and meta.get("precision") == "fp32":
        model = to_mixed_fp16(model)
        meta = {**meta, "precision": "fp16-matmul", "parity_note": "fp16 graph derived from the fp32 ONNX file"}
    if out is None:
        suffix = ".fp16.engine" if fp16 and ".fp16" not in onnx_path.name else ".engine"
        out = onnx_path.with_suffix(suffix)
    out = Path(out)
    engine, meta = build_engine_bytes(model.SerializeToString(), meta, max_batch, opt_batch, workspace_mb)
    if verify_steps:
        meta["engine_parity_max_abs_error"] = _verify(engine, model.SerializeToString(), meta, verify_steps, fp16)
    meta["onnx_source"] = str(onnx_path)
    atomic_write(out, engine)
    atomic_write(engine_sidecar(out), json.dumps(meta, indent=1).encode())
    return out


def build_engine_bytes(
    model_bytes: bytes, meta: dict[str, Any], max_batch: int = 64, opt_batch: int = 1, workspace_mb: int = 1024
) -> tuple[bytes, dict[str, Any]]:
    """Parse the ONNX graph and build a serialized engine in memory; returns (plan, metadata)."""
    trt = require_tensorrt()
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(creation, "STRONGLY_TYPED"):  # TensorRT >= 10: precision exactly as the graph's Casts say
        flags |= 1 << int(creation.STRONGLY_TYPED)
    elif meta.get("precision") != "fp32":
        raise TensorRTUnavailable(f"fp16 engines need TensorRT >= 10 (strongly typed networks); found {trt.__version__}")
    if hasattr(creation, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 would cost ~1e-3 relative error
    profile = builder.create_optimization_profile()
    opt_batch = min(max(1, opt_batch), max_batch)
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    meta = {
        **meta,
        "engine_format": ENGINE_FORMAT,
        "tensorrt_version": trt.__version__,
        "max_batch": max_batch,
        "opt_batch": opt_batch,
        "device": torch.cuda.get_device_name(),
    }
    return bytes(plan), meta


def _verify(engine: bytes, model_bytes: bytes, meta: dict[str, Any], steps: int, fp16: bool) -> float:
    """Max |engine - onnxruntime| over every output and state, each side feeding back its own state."""
    from resel.export.onnx import check_inputs, onnx_steps

    worst = 0.0
    for batch in (1, min(7, meta["max_batch"])):
        trt_b = TensorRTBackend(engine, meta, batch)
        feeds = check_inputs(meta, steps, batch, seed=batch)
        for feed, ref in zip(feeds, onnx_steps(model_bytes, meta, feeds, batch), strict=True):
            for name, dst in zip(INPUT_NAMES, trt_b.host.inputs(), strict=True):
                np.copyto(dst, feed[name])
            trt_b.run()
            state = trt_b.get_state()
            got = [*trt_b.host.outputs(), *(state[n] for n in trt_b.names)]
            for x, y in zip(got, ref, strict=True):
                worst = max(worst, float(np.abs(x - y).max()))
    limit = 5e-2 if fp16 else 1e-3
    if not worst <= limit:
        raise RuntimeError(f"TensorRT engine disagrees with onnxruntime: max abs error {worst:.3e} > {limit:g}")
    return worst


# ---- running an engine ----------------------------------------------------------------------
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
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` naming what to install."""
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise TensorRTUnavailable(reason)
    import tensorrt

    return tensorrt


class TensorRTBackend:
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
        actions = ActionMapping.from_meta(meta)
        action = pinned(batch, *actions.row_shape, dtype=getattr(torch, actions.action_dtype))
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
        for name, t in zip(INPUT_NAMES, self._d_in, strict=True):
            self.context.set_input_shape(name, tuple(t.shape))
        for n, t in zip(self.names, self._d_state[0], strict=True):
            self.context.set_input_shape(state_in(n), tuple(t.shape))
        self._addresses = [self._address_map(i) for i in range(2)]
        self._cur = 0
        self._graphs = None
        if cuda_graphs:
            try:
                self._graphs = [self._capture(i) for i in range(2)]
            except Exception:  # capture unsupported here: stay on the eager path
                self._graphs = None

    def _address_map(self, i: int) -> list[tuple[str, int]]:
        pairs = [(n, t.data_ptr()) for n, t in zip(INPUT_NAMES, self._d_in, strict=True)]
        pairs += [(n, t.data_ptr()) for n, t in zip(self._output_names, self._d_out, strict=True)]
        pairs += [(state_in(n), t.data_ptr()) for n, t in zip(self.names, self._d_state[i], strict=True)]
        pairs += [(state_out(n), t.data_ptr()) for n, t in zip(self.names, self._d_state[1 - i], strict=True)]
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
        """One step (a graph launch, or the eager sequence), synchronised, then swap the state sets."""
        if self._graphs is not None:
            self._graphs[self._cur].replay()
            self.torch.cuda.current_stream().synchronize()
        else:
            with self.torch.cuda.stream(self.stream):
                self._enqueue(self._cur)
            self.stream.synchronize()
        self._cur ^= 1

    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of the state set the next step reads."""
        return {n: t.cpu().numpy().copy() for n, t in zip(self.names, self._d_state[self._cur], strict=False)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` into the state set the next step reads."""
        for n, t in zip(self.names, self._d_state[self._cur], strict=False):
            t.copy_(self.torch.as_tensor(np.asarray(state[n], np.float32)))
