"""The exported policy file as a robot reads it: numpy and onnxruntime only (no torch, no onnx package).

``resel.export.onnx`` writes what :mod:`resel_deploy.contract` defines (names, state layout, format markers,
metadata entries whose values are JSON); this module checks a file against it before anything is sized from
it, so the controller loads an .onnx file on a machine that has never installed the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resel_deploy.contract import ENGINE_FORMAT, decode_metadata, engine_sidecar, validate_metadata
from resel_deploy.extras import install_hint

ORT_INSTALL_HINT = install_hint("deploy")


def read_onnx_metadata(model: bytes, source: str | Path) -> dict[str, Any]:
    """The RESeL metadata of serialised ONNX ``model``, read through onnxruntime's session metadata."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(f"running an ONNX policy needs onnxruntime: {ORT_INSTALL_HINT}") from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the metadata is read
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ValueError(f"{source} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    meta = decode_metadata(session.get_modelmeta().custom_metadata_map, source)
    validate_metadata(meta, source, {t.name: t.shape for t in [*session.get_inputs(), *session.get_outputs()]})
    return meta


def read_engine(path: str | Path) -> tuple[bytes, dict[str, Any]]:
    """The plan bytes and metadata of an engine written by ``resel export --format trt``."""
    path = Path(path)
    side = engine_sidecar(path)
    if not path.is_file():
        raise FileNotFoundError(f"engine not found: {path}")
    if not side.is_file():
        raise ValueError(f"{path}: missing its metadata file {side.name}; rebuild with `resel export --format trt`")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{side} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("engine_format") != ENGINE_FORMAT:
        raise ValueError(f"{side} does not describe a RESeL TensorRT engine")
    return path.read_bytes(), meta
