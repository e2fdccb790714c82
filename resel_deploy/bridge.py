"""The one door from ``resel_deploy`` to the torch side (torch, ``resel_train``, ``resel.export``).

Everything here imports the torch side lazily, inside the function that needs it, so ``import resel_deploy``
and an .onnx controller on onnxruntime never load torch. What goes through this door:

- ``backend="torch"``: :class:`TorchBackend` on a checkpoint's :class:`~resel_train.stepwise.StepwisePolicy`;
- ``Controller.load(checkpoint.pt)`` on onnxruntime or TensorRT: the checkpoint exported in memory by
  :func:`resel.export.onnx.export_onnx` (the same export and parity check as ``resel export``);
- TensorRT, whose device buffers are torch tensors (:mod:`resel.export.tensorrt`);
- the simulators a rollout runs against (``resel_train.envs``), and the thread's denormal flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from resel_deploy.backends import Backend
from resel_deploy.contract import HostBuffers


class TorchBackend(Backend):
    """Eager torch on the StepwisePolicy (the reference). Inputs are zero-copy views of the host buffers."""

    name = "torch"

    def __init__(self, stepwise: Any, batch: int, device: str | None = None) -> None:
        import torch

        self.torch = torch
        self.module = stepwise.eval()
        self.device = torch.device(device or "cpu")
        self.module.to(self.device)
        self.host = HostBuffers.numpy(batch, stepwise.obs_dim, stepwise.actions)
        self.names = stepwise.state_names()
        if self.device.type == "cpu":
            self._in = [torch.from_numpy(a) for a in self.host.inputs()]
        else:
            self._in = [torch.empty(a.shape, device=self.device) for a in self.host.inputs()]
        self._host_in = [torch.from_numpy(a) for a in self.host.inputs()]
        self._out = [torch.from_numpy(a) for a in self.host.outputs()]
        self.state = stepwise.initial_state(batch, device=self.device)

    def run(self) -> None:
        """One step of the module on the host inputs (copied to the device first when it is not the CPU)."""
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
        """Copies of the current state tensors, by name."""
        return {n: t.detach().cpu().numpy().copy() for n, t in zip(self.names, self.state, strict=False)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the state with copies of ``state`` on the backend's device."""
        self.state = tuple(
            self.torch.as_tensor(np.asarray(state[n], np.float32), device=self.device).clone() for n in self.names
        )


def torch_backend(path: Path, batch: int, device: str | None, threads: int | None) -> tuple[TorchBackend, dict]:
    """``backend="torch"``: the checkpoint's stepwise policy on ``device``, and its metadata (with the graph I/O)."""
    import torch

    from resel_train.stepwise import StepwisePolicy

    check_torch_device(device)
    stepwise = StepwisePolicy.from_checkpoint(path)
    if threads is not None:
        torch.set_num_threads(threads)
    inputs, outputs = stepwise.io_spec()
    return TorchBackend(stepwise, batch, device), {**stepwise.metadata(), "inputs": inputs, "outputs": outputs}


def onnx_from_checkpoint(path: Path) -> tuple[bytes, dict[str, Any]]:
    """A checkpoint exported to ONNX in memory by ``export_onnx`` (its checks and parity budget); bytes and metadata."""
    from resel.export.onnx import export_onnx

    report = export_onnx(path, write=False)
    return report.data, report.metadata


def require_tensorrt() -> None:
    """Raise ``TensorRTUnavailable`` (naming what to install) unless TensorRT and a GPU are here."""
    from resel.export.tensorrt import require_tensorrt as require

    require()


def tensorrt_backend(path: Path, kind: str, model: bytes | None, meta: dict[str, Any], batch: int) -> tuple[Any, dict]:
    """A TensorRT backend for an engine file (``kind == "engine"``: ``model`` unused) or for ONNX bytes, which
    are built into an engine in memory; returns (backend, metadata)."""
    from resel.export.tensorrt import TensorRTBackend, build_engine_bytes

    if kind == "engine":
        from resel_deploy.artifacts import read_engine

        engine, meta = read_engine(path)
        if batch > int(meta.get("max_batch", batch)):
            raise ValueError(f"{path} was built for batch <= {meta['max_batch']}; got batch={batch} "
                             "(rebuild with a larger max_batch)")
    else:
        engine, meta = build_engine_bytes(model, meta, max_batch=max(batch, 1))
    return TensorRTBackend(engine, meta, batch, source=str(path)), meta


def check_torch_device(device: str | None) -> None:
    """Refuse a device string torch cannot use here, naming what is allowed."""
    import torch

    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but torch sees no CUDA GPU; use device='cpu'")


def flush_denormals_on_this_thread() -> None:
    """FTZ/DAZ on the calling thread through torch when it is installed (onnxruntime's session option covers the
    loading thread otherwise)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_flush_denormal(True)


def make_env(env_id: str, seed: int, split: str) -> Any:
    """The simulator of a RESeL task id (``resel_train.envs.make_env``), for rollouts."""
    from resel_train.envs import make_env as make

    return make(env_id, seed=seed, split=split)
