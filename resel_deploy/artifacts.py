"""The exported policy file as a robot reads it: numpy and onnxruntime only (no torch, no onnx package).

``resel.export.onnx`` writes what this module defines: the format marker and version, and metadata
entries whose values are JSON (dimensions, action bounds, the state layout, the parity certificate).
Keeping the definition on the reading side lets the controller load an .onnx file on a machine that
has never installed the training stack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FORMAT = "resel-stepwise"
FORMAT_VERSION = 1
ENGINE_FORMAT = "resel-stepwise-tensorrt"  # the JSON sidecar of a TensorRT engine
ORT_INSTALL_HINT = "pip install 'resel[deploy]'  (numpy + onnxruntime)"


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
    return decode_metadata(session.get_modelmeta().custom_metadata_map, source)


def engine_sidecar(path: Path) -> Path:
    """Where an engine's metadata lives: ``policy.engine`` -> ``policy.engine.json``."""
    return path.with_name(path.name + ".json")


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
    if meta.get("engine_format") != ENGINE_FORMAT:
        raise ValueError(f"{side} does not describe a RESeL TensorRT engine")
    return path.read_bytes(), meta
