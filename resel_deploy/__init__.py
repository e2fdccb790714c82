"""RESeL deployment: a trained checkpoint as a constant-time stepwise controller.

- :class:`Controller` (``Controller.load(path, backend=...)``): what a control loop embeds.
- :class:`StepwisePolicy`: the torch module behind it, one step as a pure function of
  (obs, prev_reward, is_first, noise, state) -> (action, mean, log_std, new state).
- :func:`run_rollouts` (in :mod:`resel_deploy.rollout`): episodes against the simulators with
  per-step latency statistics.

Never imports the trainer, the replay buffer or the algorithm.
"""

from resel_deploy.controller import BACKENDS, Controller, NonFiniteAction


def __getattr__(name):  # `import resel_deploy` loads neither torch nor a simulator: a robot may have neither
    if name in ("run_rollouts", "RolloutReport"):
        from resel_deploy import rollout

        return getattr(rollout, name)
    if name == "StepwisePolicy":
        from resel_deploy.stepwise import StepwisePolicy

        return StepwisePolicy
    raise AttributeError(name)


__all__ = ["BACKENDS", "Controller", "NonFiniteAction", "StepwisePolicy", "run_rollouts", "RolloutReport"]
