"""Run many independent points (sweep, sensitivity, fine-tune sweep) through one small interface.

A *point* is one unit of work — a (criterion, sparsity, seed) of a sweep, a (layer, sparsity) of
a sensitivity analysis, one fine-tune of a fine-tune sweep. Every point reads the same read-only
*shared* value (the model, the data, the reference outputs) and returns a small result. An
:class:`Executor` runs ``task(shared, point)`` for every point and returns the results in the
order of the points, whatever order they finished in.

``task`` must be a module-level function and ``shared``, the points and the results picklable:
other executors (local worker processes, a Ray cluster) send them to other processes, and a
point computed anywhere must equal the one computed in-process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Generic, Sequence, TypeVar

from .evaluation import EvaluationCancelled

__all__ = ["Task", "Progress", "Executor", "InlineExecutor", "INLINE"]

SharedT = TypeVar("SharedT")
PointT = TypeVar("PointT")
ResultT = TypeVar("ResultT")
Task = Callable[[SharedT, PointT], ResultT]
# (points done, points in all, what finished last)
Progress = Callable[[int, int, str], None]


class Executor(ABC, Generic[SharedT, PointT, ResultT]):
    """Runs ``task(shared, point)`` for every point; results come back in the points' order."""

    #: A short name for summaries ("inline", "processes", "ray").
    name: str = "executor"

    @property
    def workers(self) -> int:
        """How many points can run at once."""
        return 1

    def describe(self) -> str:
        """Where the points run, for the user (e.g. "in this process", "on the cluster (4 workers)")."""
        return f"{self.name} ({self.workers} worker{'s' if self.workers != 1 else ''})"

    @abstractmethod
    def run(
        self,
        task: Task,
        shared: SharedT,
        points: Sequence[PointT],
        *,
        label: Callable[[PointT], str] = str,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[ResultT]:
        """Every point's result, in the order of ``points``.

        ``progress(done, total, label(point))`` is called after each finished point.
        ``should_stop()`` is polled between points; when it returns True, outstanding points are
        cancelled and :class:`~fpgm_core.evaluation.EvaluationCancelled` is raised (no partial result).
        """


class InlineExecutor(Executor):
    """Runs the points one after another in this process and thread (the default)."""

    name = "inline"

    def describe(self) -> str:
        return "in this process"

    def run(self, task, shared, points, *, label=str, progress=None, should_stop=None):
        results = []
        for done, point in enumerate(points, start=1):
            if should_stop is not None and should_stop():
                raise EvaluationCancelled("stopped")
            results.append(task(shared, point))
            if progress is not None:
                progress(done, len(points), label(point))
        return results


INLINE = InlineExecutor()
