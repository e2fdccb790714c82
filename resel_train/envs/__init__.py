"""RESeL task registry: every task family of the paper as Gymnasium environments.

``list_tasks()`` / ``task_info(id)`` describe the tasks without importing any simulator;
``make_env(id, seed, split)`` builds one (simulators are imported only then). Importing this
package also registers every task with Gymnasium as ``resel/<id>-v0`` (``gym_id(id)``), with
``split`` and ``seed`` as ``gymnasium.make`` keyword arguments.
"""

from .registry import FAMILIES, TaskInfo, gym_id, list_tasks, make_env, task_info

__all__ = ["FAMILIES", "TaskInfo", "gym_id", "list_tasks", "make_env", "task_info"]
