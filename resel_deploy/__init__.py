"""RESeL deployment: an exported policy as a constant-time controller.

- :class:`Controller` (``Controller.load(path, backend=...)``): what a control loop embeds. An
  ``.onnx`` file runs with numpy and onnxruntime alone; a TensorRT engine with tensorrt; a training
  checkpoint (``backend="torch"``, or exported in memory) needs the torch side and imports it then.
- :func:`run_rollouts` (in :mod:`resel_deploy.rollout`): episodes against the simulators with
  per-step latency statistics.

What a policy file is (names, state layout, action mapping, metadata, format markers) is written once, in
:mod:`resel_deploy.contract`, which the stepwise model and the exporters import too. The torch side (a
checkpoint's :class:`resel_train.stepwise.StepwisePolicy`, the in-memory export, TensorRT's CUDA buffers,
the simulators) is reached through one module, :mod:`resel_deploy.bridge`, and only when used: importing this
package loads neither torch nor a simulator, and it never imports the trainer, the replay buffer or the algorithm.
Names are resolved lazily (PEP 562), so importing :mod:`resel_deploy.contract` alone loads nothing else.
"""

from __future__ import annotations

from resel_deploy.lazy import lazy_exports

_EXPORTS = {
    "BACKENDS": "resel_deploy.controller",
    "Controller": "resel_deploy.controller",
    "NonFiniteAction": "resel_deploy.controller",
    "run_rollouts": "resel_deploy.rollout",  # imports gymnasium when a rollout builds its env
    "RolloutReport": "resel_deploy.rollout",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
