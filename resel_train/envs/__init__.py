"""RESeL task registry: every task family of the paper as Gymnasium environments.

``list_tasks()`` / ``task_info(id)`` describe the tasks without importing any simulator;
``make_env(id, seed, split)`` builds one (simulators are imported only then).
"""

from .registry import FAMILIES, TaskInfo, list_tasks, make_env, task_info

__all__ = ["FAMILIES", "TaskInfo", "list_tasks", "make_env", "task_info"]
