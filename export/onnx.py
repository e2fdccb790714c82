"""Export the stepwise policy to one self-contained ONNX file, with a parity certificate.

Graph (opset 18 by default; TensorRT 10 and onnxruntime >= 1.16 accept it):

    inputs   obs (batch, obs_dim), prev_reward (batch, 1), is_first (batch,), noise (batch, act_dim),
             state_in.<name> for every state tensor
    outputs  action (batch, act_dim)          env units: tanh(mean + exp(log_std) * noise) rescaled
             action_mean, action_log_std      the Gaussian head (pre-tanh)
             state_out.<name>                 same shapes as state_in.<name>

Discrete-action policies (metadata ``discrete``: true) output instead
             action (batch,) int64            argmax(action_logits + noise); noise: Gumbel, zeros = greedy
             action_logits, action_log_probs  the categorical head (batch, act_dim)
and the parity certificate then also certifies identical (greedy and sampled) actions.

All other tensors are float32 and the batch axis is dynamic (``batch``). State names, in order:
``prev_obs``, ``prev_act``, then the encoder's (Mamba: ``block0.conv``, ``block0.ssm``, ...;
GRU: ``gru``; LSTM: ``lstm.h``, ``lstm.c``; S5: ``layer0.re``, ``layer0.im``, ...); the semantics are in
:mod:`resel_train.stepwise`. Weights are embedded in the
file (``external_data=False``: no ``.onnx.data`` sidecar).

Metadata (``metadata_props``, every value JSON-encoded): format, format_version, toolkit_version,
obs_dim, act_dim, reward_as_input, action_low, action_high, task_id, encoder, state_layout,
inputs, outputs, opset, precision, exporter, and the parity certificate parity_max_abs_error,
parity_max_scaled_error, parity_check. Read it back with :func:`read_metadata`.

Exporter: torch 2.13's dynamo exporter (``torch.onnx.export(dynamo=True)``). The stepwise module
writes nothing in place and returns its new state, which is what the dynamo exporter needs; the
batch axis is declared with ``torch.export.Dim`` (and the example batch is 2, so nothing can
specialise to 1); its optimiser folds constants, so the graph holds only the step's own ops. It
gives a clean single-file graph; the TorchScript exporter is not needed.

``--fp16`` (``fp16=True``) rewrites the fp32 graph so that every weight matrix product (Gemm /
MatMul with a weight initializer) runs in float16 between two Cast nodes, and everything else --
norms, softplus, exp(dt * A), the state update and the state tensors themselves -- stays float32.
TensorRT >= 10 builds such a graph as a strongly typed network (fp16 exactly where the graph says).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resel_deploy import contract
from resel_deploy.contract import FORMAT, FORMAT_VERSION, INPUT_NAMES, decode_metadata, state_in
from resel_deploy.extras import install_hint
from resel_train.persist.atomic import atomic_write
from resel_train.stepwise import StepwisePolicy

OPSET = 18
ORT_INSTALL_HINT = install_hint("onnx")


class ExportError(RuntimeError):
    """The export could not produce a valid graph."""


class ParityError(ExportError):
    """The exported graph disagrees with the torch stepwise policy beyond the tolerance."""


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how closely it matches torch."""

    path: Path | None
    opset: int
    precision: str
    max_abs_error: float
    max_scaled_error: float
    tolerance: float
    check_steps: int
    check_batches: tuple[int, ...]
    size_bytes: int
    seconds: float
    exporter: str = "torch.onnx.export(dynamo=True)"
    metadata: dict[str, Any] = field(default_factory=dict)
    data: bytes = field(default=b"", repr=False)  # the serialised graph (what was written, if anything)

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) pairs for printing."""
        m = self.metadata
        return [
            ("path", str(self.path)),
            ("task", str(m.get("task_id"))),
            ("obs_dim / act_dim", f"{m.get('obs_dim')} / {m.get('act_dim')}"),
            ("encoder", str(m.get("encoder"))),
            ("state", ", ".join(f"{s['name']}{tuple(s['shape'])}" for s in m.get("state_layout", []))),
            ("opset / precision", f"{self.opset} / {self.precision}"),
            ("size", f"{self.size_bytes / 1e6:.2f} MB (weights embedded)"),
            ("parity vs torch", f"max abs err {self.max_abs_error:.2e} over {self.check_steps} steps at batch "
                                f"{', '.join(map(str, self.check_batches))} (tolerance {self.tolerance:g}, scaled)"),
            ("export time", f"{self.seconds:.1f} s"),
        ]

    def table(self):
        """A ``rich.table.Table`` of :meth:`rows`."""
        from rich.table import Table

        table = Table(title="ONNX export", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        for key, value in self.rows():
            table.add_row(key, value)
        return table


# ---------------------------------------------------------------------------------------------
def toolkit_version() -> str:
    """The installed toolkit's version, recorded in every exported file (the source tree's when it is not installed)."""
    try:
        from importlib.metadata import version

        return version("resel")
    except Exception:  # not installed as a distribution
        import resel_train

        return getattr(resel_train, "__version__", "unknown")


def stepwise_to_onnx(stepwise: StepwisePolicy, opset: int = OPSET):
    """Trace the stepwise policy into an fp32 ``onnx.ModelProto`` (no checks, no metadata)."""
    _require("onnx")
    _require("onnxscript")
    inputs, outputs = stepwise.io_spec()
    example = _example_inputs(stepwise, batch=2)
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = ({0: batch}, {0: batch}, {0: batch}, {0: batch}, tuple({0: batch} for _ in example[4:]))
    stepwise = stepwise.eval()
    with _quiet():
        try:
            program = torch.onnx.export(
                stepwise, example, None,
                input_names=[i["name"] for i in inputs], output_names=[o["name"] for o in outputs],
                dynamic_shapes=dynamic, opset_version=opset, dynamo=True, external_data=False,
                optimize=True, verbose=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    model = program.model_proto
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != [i["name"] for i in inputs] or got_out != [o["name"] for o in outputs]:
        raise ExportError(f"exported graph has inputs {got_in} and outputs {got_out}; expected {inputs} / {outputs}")
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            raise ExportError(f"{value.name}: the batch axis was not exported as dynamic ({dims[0] if dims else 'scalar'})")
    return model


def to_mixed_fp16(model):
    """Copy of an fp32 graph with weight matrix products in float16 (Cast in / Cast out); the rest fp32.

    Only Gemm / MatMul nodes whose second input is a 2-D initializer change: their weight (and
    Gemm bias) become float16 initializers of their own, the activation is cast to float16 before
    and the result back to float32 after. The state update, exp, softplus, norms and all graph
    inputs and outputs keep float32.
    """
    onnx = _require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, new_inits, casts = [], [], {}
    counter = 0

    def fp16_init(name):
        half = name + "__fp16"
        if half not in casts:
            array = numpy_helper.to_array(inits[name]).astype(np.float16)
            new_inits.append(numpy_helper.from_array(array, half))
            casts[half] = half
        return half

    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        if node.op_type in ("Gemm", "MatMul") and weight in inits and len(inits[weight].dims) == 2:
            counter += 1
            x = node.input[0]
            x_half = casts.get(("act", x))
            if x_half is None:
                x_half = f"{x}__to_fp16"
                new_nodes.append(helper.make_node("Cast", [x], [x_half], to=TensorProto.FLOAT16, name=f"cast_in_{counter}"))
                casts[("act", x)] = x_half
            ins = [x_half, fp16_init(weight)]
            if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
                if node.input[2] not in inits:
                    raise ExportError(f"Gemm {node.name} has a non-constant bias; cannot convert to fp16")
                ins.append(fp16_init(node.input[2]))
            out = node.output[0]
            half_out = f"{out}__fp16"
            new_nodes.append(helper.make_node(node.op_type, ins, [half_out], name=node.name or f"mm_{counter}",
                                              **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
            new_nodes.append(helper.make_node("Cast", [half_out], [out], to=TensorProto.FLOAT, name=f"cast_out_{counter}"))
        else:
            new_nodes.append(node)
    if counter == 0:
        raise ExportError("no weight matrix products found to convert to fp16")
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model


def export_onnx(
    checkpoint: str | Path | StepwisePolicy,
    out: str | Path | None = None,
    opset: int = OPSET,
    check_steps: int = 200,
    tolerance: float | None = None,
    fp16: bool = False,
    seed: int = 0,
    write: bool = True,
) -> ExportReport:
    """Export a checkpoint's policy to one ONNX file after checking it against torch.

    ``checkpoint``: a training checkpoint (or an already built ``StepwisePolicy``).
    ``out``: the file to write; default: the checkpoint path with suffix ``.onnx``
    (``.fp16.onnx`` with ``fp16``). ``check_steps``: steps of the parity check, run at batch 1 and
    batch 7 with random observations, rewards, noise and episode starts, each side feeding back its
    own state. ``tolerance``: the largest allowed ``|onnx - torch| / (1 + |torch|)`` over every
    output and state (default 1e-4, or 3e-2 with ``fp16``). The graph also passes
    ``onnx.checker.check_model(full_check=True)``. Nothing is written when a check fails
    (:class:`ExportError` / :class:`ParityError`). Returns an :class:`ExportReport`; the measured
    errors are stored in the file's metadata (the parity certificate). ``write=False``: the same export and
    checks in memory only (what ``Controller.load(checkpoint)`` runs; ``out`` is not used); the graph is the
    report's ``data``.
    """
    onnx = _require("onnx")
    start = time.perf_counter()
    if isinstance(checkpoint, StepwisePolicy):
        stepwise, source = checkpoint, None
    else:
        stepwise, source = StepwisePolicy.from_checkpoint(checkpoint), Path(checkpoint)
    if out is None and write:
        if source is None:
            raise ValueError("out is required when exporting a StepwisePolicy object")
        out = source.with_suffix(".fp16.onnx" if fp16 else ".onnx")
    out = Path(out) if write else None
    tolerance = (3e-2 if fp16 else 1e-4) if tolerance is None else tolerance

    model = stepwise_to_onnx(stepwise, opset)
    precision = "fp32"
    if fp16:
        model = to_mixed_fp16(model)
        precision = "fp16-matmul"
    meta = build_metadata(stepwise, opset, precision)
    set_metadata(model, meta)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc
    batches = (1, 7)
    abs_err, scaled_err = parity_error(model.SerializeToString(), stepwise, check_steps, batches, seed)
    if not scaled_err <= tolerance:  # also catches NaN
        raise ParityError(
            f"ONNX graph disagrees with the torch policy: max |onnx - torch| = {abs_err:.3e} "
            f"(scaled {scaled_err:.3e} > tolerance {tolerance:g}) over {check_steps} steps; nothing written"
        )
    meta.update(
        parity_max_abs_error=abs_err,
        parity_max_scaled_error=scaled_err,
        parity_check={"steps": check_steps, "batches": list(batches), "tolerance": tolerance, "seed": seed,
                      "reference": "torch StepwisePolicy (float32)", "runtime": _ort_version()},
    )
    set_metadata(model, meta)
    data = model.SerializeToString()
    if out is not None:
        atomic_write(out, data)
    return ExportReport(
        path=out, opset=opset, precision=precision, max_abs_error=abs_err, max_scaled_error=scaled_err,
        tolerance=tolerance, check_steps=check_steps, check_batches=batches, size_bytes=len(data),
        seconds=time.perf_counter() - start, metadata=meta, data=data,
    )


# ---- metadata -------------------------------------------------------------------------------
def build_metadata(stepwise: StepwisePolicy, opset: int, precision: str) -> dict[str, Any]:
    """The metadata an exported graph carries: format, the policy's deploy contract, I/O spec, opset, precision."""
    inputs, outputs = stepwise.io_spec()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toolkit_version": toolkit_version(),
        **stepwise.metadata(),
        "inputs": inputs,
        "outputs": outputs,
        "opset": opset,
        "precision": precision,
        "exporter": f"torch {torch.__version__} dynamo",
    }


def set_metadata(model, meta: dict[str, Any]) -> None:
    """Replace an ONNX model's metadata_props with ``meta``, each value JSON-encoded."""
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.producer_name, model.producer_version = "resel", str(meta.get("toolkit_version", ""))
    model.doc_string = (
        "RESeL stepwise policy: (obs, prev_reward, is_first, noise, state_in.*) -> "
        "(action, action_mean, action_log_std, state_out.*); see metadata_props"
    )


def read_metadata(model_or_path) -> dict[str, Any]:
    """The decoded metadata of a RESeL ONNX file or ModelProto (``ValueError`` when it is not one)."""
    onnx = _require("onnx")
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ValueError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    else:
        model, path = model_or_path, "<model>"
    return decode_metadata({entry.key: entry.value for entry in model.metadata_props}, path)


# ---- parity ---------------------------------------------------------------------------------
def check_inputs(stepwise_or_meta, steps: int, batch: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random per-step inputs (obs, prev_reward, is_first, noise) with episode starts at t=0 and ~3% of steps."""
    if isinstance(stepwise_or_meta, StepwisePolicy):
        obs_dim, act_dim = stepwise_or_meta.obs_dim, stepwise_or_meta.act_dim
    else:
        obs_dim, act_dim = stepwise_or_meta["obs_dim"], stepwise_or_meta["act_dim"]
    rng = np.random.default_rng(seed)
    feeds = []
    obs, prev_reward, is_first, noise = INPUT_NAMES
    for t in range(steps):
        first = (rng.random(batch) < 0.03).astype(np.float32) if t else np.ones(batch, np.float32)
        step_noise = rng.standard_normal((batch, act_dim), dtype=np.float32) * float(t % 2)  # drawn before obs
        feeds.append({
            obs: rng.standard_normal((batch, obs_dim), dtype=np.float32),
            prev_reward: rng.standard_normal((batch, 1), dtype=np.float32),
            is_first: first,
            noise: step_noise,
        })
    return feeds


def onnx_steps(model_bytes: bytes, meta: dict[str, Any], feeds: list[dict[str, np.ndarray]], batch: int):
    """Run the graph over ``feeds`` from a zero state with onnxruntime (one thread), feeding back its own state;
    yields every step's outputs (the three outputs, then the state) as numpy arrays."""
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    layout = contract.state_shapes(meta, batch)
    state = [np.zeros(shape, np.float32) for _, shape in layout]
    for feed in feeds:
        got = session.run(out_names, {**feed, **{state_in(n): s for (n, _), s in zip(layout, state, strict=True)}})
        yield got
        state = got[3:]


def parity_error(model_bytes: bytes, stepwise: StepwisePolicy, steps: int, batches=(1, 7), seed: int = 0):
    """(max abs error, max scaled error) between onnxruntime and torch over every output and state."""
    meta = stepwise.metadata()
    max_abs, max_scaled = 0.0, 0.0
    for b in batches:
        torch_state = stepwise.initial_state(b)
        feeds = check_inputs(stepwise, steps, b, seed + b)
        for feed, got in zip(feeds, onnx_steps(model_bytes, meta, feeds, b), strict=True):
            with torch.inference_mode():
                ref = stepwise(*(torch.from_numpy(feed[k]) for k in INPUT_NAMES), *torch_state)
            for g, r in zip(got, ref, strict=False):
                r = r.numpy()
                diff = np.abs(g.astype(np.float64) - r)
                if diff.size:
                    max_abs = max(max_abs, float(diff.max()))
                    max_scaled = max(max_scaled, float((diff / (1.0 + np.abs(r))).max()))
                if not np.all(np.isfinite(g)):
                    return float("nan"), float("nan")
            torch_state = ref[3:]
    return max_abs, max_scaled


# ---- helpers --------------------------------------------------------------------------------
def _example_inputs(stepwise: StepwisePolicy, batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    state = tuple(torch.randn(batch, *s.shape, generator=g) for s in stepwise.state_spec())
    return (
        torch.randn(batch, stepwise.obs_dim, generator=g),
        torch.randn(batch, 1, generator=g),
        torch.tensor([1.0] + [0.0] * (batch - 1)),
        torch.zeros(batch, stepwise.act_dim),
        *state,
    )


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and optional-dependency warnings (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=False):
            lg.setLevel(level)


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"ONNX export needs '{module}': {ORT_INSTALL_HINT}") from exc


def _ort_version() -> str:
    try:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        return "unknown"
