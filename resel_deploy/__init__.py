"""RESeL deployment: an exported policy as a constant-time controller.

- :class:`Controller` (``Controller.load(path, backend=...)``): what a control loop embeds. An
  ``.onnx`` file runs with numpy and onnxruntime alone; a TensorRT engine with tensorrt; a training
  checkpoint (``backend="torch"``, or exported in memory) needs the torch side and imports it then.
- :func:`run_rollouts` (in :mod:`resel_deploy.rollout`): episodes against the simulators with
  per-step latency statistics.

The torch module behind a checkpoint's step is :class:`resel_train.stepwise.StepwisePolicy` (the
training networks' own step, which the exporter turns into the ONNX graph). Importing this package
loads neither torch nor a simulator, and it never imports the trainer, the replay buffer or the algorithm.
"""

from resel_deploy.controller import BACKENDS, Controller, NonFiniteAction


def __getattr__(name):  # keep `import resel_deploy` free of simulator imports
    if name in ("run_rollouts", "RolloutReport"):
        from resel_deploy import rollout

        return getattr(rollout, name)
    raise AttributeError(name)


__all__ = ["BACKENDS", "Controller", "NonFiniteAction", "run_rollouts", "RolloutReport"]
