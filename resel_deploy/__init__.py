"""RESeL deployment: a trained checkpoint as a constant-time stepwise controller.

- :class:`Controller` (``Controller.load(path, backend=...)``): what a control loop embeds.
- :class:`StepwisePolicy`: the torch module behind it, one step as a pure function of
  (obs, prev_reward, is_first, noise, state) -> (action, mean, log_std, new state).
- :func:`run_rollouts` (in :mod:`resel_deploy.rollout`): episodes against the simulators with
  per-step latency statistics.

Never imports the trainer, the replay buffer or the algorithm.
"""

from resel_deploy.controller import BACKENDS, Controller, NonFiniteAction
from resel_deploy.stepwise import StepwisePolicy


def __getattr__(name):  # keep `import resel_deploy` free of simulator imports
    if name in ("run_rollouts", "RolloutReport"):
        from resel_deploy import rollout

        return getattr(rollout, name)
    raise AttributeError(name)


__all__ = ["BACKENDS", "Controller", "NonFiniteAction", "StepwisePolicy", "run_rollouts", "RolloutReport"]
