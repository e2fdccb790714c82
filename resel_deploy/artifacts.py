"""The exported policy file as a robot reads it: numpy and onnxruntime only (no torch, no onnx package).

``resel.export.onnx`` writes what this module defines: the format marker and version, and metadata
entries whose values are JSON (dimensions, action bounds, the state layout, the parity certificate).
Keeping the definition on the reading side lets the controller load an .onnx file on a machine that
has never installed the training stack.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resel_deploy.extras import install_hint

FORMAT = "resel-stepwise"
FORMAT_VERSION = 1
ENGINE_FORMAT = "resel-stepwise-tensorrt"  # the JSON sidecar of a TensorRT engine
ORT_INSTALL_HINT = install_hint("deploy")
INPUT_NAMES = ("obs", "prev_reward", "is_first", "noise")  # the graph's inputs, then STATE_IN + each state name
STATE_IN, STATE_OUT = "state_in.", "state_out."  # prefixes of the state tensors the graph reads and writes
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
    if names[:2] != ["prev_obs", "prev_act"] or len(set(names)) != len(names):
        raise fail("state_layout", f"must start with prev_obs, prev_act and name each state once; got {names}")
    for key, want in (("inputs", [*INPUT_NAMES, *(STATE_IN + n for n in names)]),
                      ("outputs", [None, None, None, *(STATE_OUT + n for n in names)])):
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
    n_bounds = 1 if meta.get("discrete", False) else act_dim
    for key in ("action_low", "action_high"):
        value = meta.get(key)
        if not (isinstance(value, list) and len(value) == n_bounds and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise fail(key, f"must be a list of {n_bounds} finite numbers; got {value!r:.60}")
    low, high = meta["action_low"], meta["action_high"]
    if any(lo > hi for lo, hi in zip(low, high)):
        raise fail("action_high", f"is below action_low somewhere ({high} < {low})")
    if meta.get("discrete", False) and (low != [0] or high != [act_dim - 1]):
        raise fail("action_low", f"of a discrete policy must be [0] with action_high [{act_dim - 1}]")


def _state_entry_ok(entry: Any) -> bool:
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(shape, list)
            and len(shape) >= 1 and shape[0] == "batch" and all(_is_int(d, 0) for d in shape[1:]))


def expected_shapes(meta: Mapping[str, Any]) -> dict[str, list[int | None]]:
    """Every graph input's and state output's shape as the (validated) metadata describes it; None: the batch axis."""
    o, a = meta["obs_dim"], meta["act_dim"]
    shapes: dict[str, list[int | None]] = {"obs": [None, o], "prev_reward": [None, 1], "is_first": [None],
                                           "noise": [None, a]}
    for s in meta["state_layout"]:
        shapes[STATE_IN + s["name"]] = shapes[STATE_OUT + s["name"]] = [None, *s["shape"][1:]]
    return shapes


def check_graph_shapes(meta: Mapping[str, Any], graph: Mapping[str, Sequence[Any]], source: str | Path) -> None:
    """The graph's own tensor shapes (``graph``: name -> dims, a non-integer or negative dim is the batch axis)
    against the metadata: the graph is what runs, so a metadata key that disagrees with it is refused by name."""
    for name, want in expected_shapes(meta).items():
        got = [d if isinstance(d, int) and d >= 0 else None for d in graph.get(name, [])]
        if got == want:
            continue
        key = ("obs_dim" if name == "obs" else "act_dim" if name == "noise" else
               "state_layout" if name.startswith((STATE_IN, STATE_OUT)) else "inputs")
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
    if not isinstance(meta, dict) or meta.get("engine_format") != ENGINE_FORMAT:
        raise ValueError(f"{side} does not describe a RESeL TensorRT engine")
    return path.read_bytes(), meta
