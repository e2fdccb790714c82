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

Running: :class:`resel_deploy.backends.TensorRTBackend` (via ``Controller.load(path,
backend="tensorrt")``) binds separate input and output state buffers (ping-pong; TensorRT must not
read and write the same state memory in one step) and by default captures one CUDA graph per
direction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from resel_deploy.artifacts import ENGINE_FORMAT, engine_sidecar, read_engine
from resel_deploy.backends import TensorRTUnavailable, require_tensorrt, tensorrt_unavailable_reason
from resel_train.atomic import atomic_write

__all__ = ["TensorRTUnavailable", "build_engine", "build_engine_bytes", "read_engine", "tensorrt_unavailable_reason"]


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
    from resel_deploy.controller import detect_kind

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
    from resel.export.onnx import check_inputs
    from resel_deploy.backends import OnnxRuntimeBackend, TensorRTBackend

    worst = 0.0
    for batch in (1, min(7, meta["max_batch"])):
        trt_b = TensorRTBackend(engine, meta, batch)
        ort_b = OnnxRuntimeBackend(model_bytes, meta, batch, flush_denormals=False)
        for feed in check_inputs(meta, steps, batch, seed=batch):
            for b in (trt_b, ort_b):
                for name, dst in zip(("obs", "prev_reward", "is_first", "noise"), b.host.inputs(), strict=False):
                    np.copyto(dst, feed[name])
                b.run()
            for x, y in zip(trt_b.host.outputs(), ort_b.host.outputs(), strict=False):
                worst = max(worst, float(np.abs(x - y).max()))
            st_t, st_o = trt_b.get_state(), ort_b.get_state()
            for name in st_t:
                worst = max(worst, float(np.abs(st_t[name] - st_o[name]).max()))
    limit = 5e-2 if fp16 else 1e-3
    if not worst <= limit:
        raise RuntimeError(f"TensorRT engine disagrees with onnxruntime: max abs error {worst:.3e} > {limit:g}")
    return worst
