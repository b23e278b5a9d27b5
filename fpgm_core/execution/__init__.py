"""Run many independent points (sweep, sensitivity, fine-tune sweep) in this process, on local
worker processes, or on a Ray cluster, through one small interface.

* :mod:`.base` — :class:`Executor` (``run(task, shared, points, …)`` → results in the points'
  order; ``stream(task, shared, point, report=…)`` for one long point that reports as it goes),
  :class:`InlineExecutor` and ``INLINE`` (the default: this process, one point at a time).
* :mod:`.processes` — :class:`ProcessExecutor` (``processes:N``).
* :mod:`.ray_cluster` — :class:`RayExecutor` (``ray``, ``ray:ADDRESS``); Ray is imported only
  when one is used.
* :mod:`.spec` — :func:`parse_executor`, the CLI's ``--executor`` specs.
"""

from .base import (
    INLINE,
    Executor,
    ExecutorError,
    InlineExecutor,
    Placement,
    Progress,
    RunReport,
    StreamTask,
    Task,
    point_should_stop,
)
from .processes import ProcessExecutor
from .ray_cluster import RayExecutor, token_source
from .spec import EXECUTOR_SPECS, parse_executor

__all__ = [
    "Task",
    "StreamTask",
    "Progress",
    "Placement",
    "RunReport",
    "Executor",
    "ExecutorError",
    "InlineExecutor",
    "INLINE",
    "point_should_stop",
    "ProcessExecutor",
    "RayExecutor",
    "token_source",
    "EXECUTOR_SPECS",
    "parse_executor",
]
