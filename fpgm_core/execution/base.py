"""The executor interface — ``task(shared, point)`` for many independent points — and the inline executor.

A *point* is one unit of work — a (criterion, sparsity, seed) of a sweep, a (layer, sparsity) of
a sensitivity analysis, one fine-tune of a fine-tune sweep. Every point reads the same read-only
*shared* value (the model, the data, the reference outputs) and returns a small result. An
:class:`Executor` runs ``task(shared, point)`` for every point and returns the results in the
order of the points, whatever order they finished in.

``task`` must be a module-level function and ``shared``, the points and the results picklable:
other executors (local worker processes, a Ray cluster) send them to other processes, and a
point computed anywhere must equal the one computed in-process. ``shared`` must not change
while an executor may still hold it: executors that send it away keep the copy they sent for as
long as the same object is passed again (one transfer for many runs over the same model).

:meth:`Executor.stream` runs *one* long point whose task reports as it goes (a fine-tune's
epochs): ``task(shared, point, send)``, each ``send(event)`` reaching the caller's ``report``
while the point runs; a stop cancels it.
"""

from __future__ import annotations

import os
import socket
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from ..errors import FpgmError
from ..evaluation import EvaluationCancelled

__all__ = ["ExecutorError", "Task", "StreamTask", "Progress", "Placement", "RunReport", "Executor", "InlineExecutor", "INLINE",
           "point_should_stop"]

SharedT = TypeVar("SharedT")
PointT = TypeVar("PointT")
ResultT = TypeVar("ResultT")
Task = Callable[[SharedT, PointT], ResultT]
# task(shared, point, send): send(event) reports while the point runs
StreamTask = Callable[[SharedT, PointT, Callable[[Any], None]], ResultT]
# (points done, points in all, what finished last)
Progress = Callable[[int, int, str], None]
# (host name, process id) of the process that computed a point
Placement = tuple[str, int]

# The caller's should_stop while a point runs in the caller's own thread (inline), so that a
# task can stop midway (between forward batches); None wherever the point runs elsewhere.
_POINT_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("fpgm_point_stop", default=None)


class ExecutorError(FpgmError):
    """Points could not be run where asked: a bad executor spec, a cluster out of reach, a worker lost."""


def point_should_stop() -> Callable[[], bool] | None:
    """Inside a task: the run's ``should_stop`` when the point runs in the caller's thread, else None.

    Executors that run points in other processes poll ``should_stop`` themselves and cancel the
    outstanding points, so tasks there need not.
    """
    return _POINT_STOP.get()


def _ignore(event: Any) -> None:
    """A ``send`` whose events nobody reads."""


def this_process() -> Placement:
    """Where the calling process is: (host name, pid)."""
    return socket.gethostname(), os.getpid()


@dataclass(frozen=True)
class RunReport:
    """What one :meth:`Executor.run` did: how many points, how long, and where each was computed."""

    executor: str
    points: int
    seconds: float
    placements: dict[Placement, int]
    #: ``time.monotonic()`` when the run ended, to pick one command's runs out of an executor's history.
    finished: float

    @property
    def hosts(self) -> dict[str, int]:
        """Points computed per host."""
        counts: Counter[str] = Counter()
        for (host, _), n in self.placements.items():
            counts[host] += n
        return dict(counts)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the report."""
        return {"executor": self.executor, "points": self.points, "seconds": self.seconds,
                "placements": [{"host": host, "pid": pid, "points": n} for (host, pid), n in sorted(self.placements.items())]}


class Executor(ABC, Generic[SharedT, PointT, ResultT]):
    """Runs ``task(shared, point)`` for every point; results come back in the points' order.

    An executor may hold resources (worker processes, a cluster connection): use it as a context
    manager, or call :meth:`close`, when done. Each run is recorded in :meth:`reports`.
    """

    #: A short name for summaries ("inline", "processes", "ray").
    name: str = "executor"

    def __init__(self) -> None:
        # The last runs only: a dashboard keeps one executor for the life of the server.
        self._reports: deque[RunReport] = deque(maxlen=64)

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
        Any exception (a task's, or one raised by ``progress``) also cancels the outstanding points.
        """

    def stream(
        self,
        task: StreamTask,
        shared: SharedT,
        point: PointT,
        *,
        label: Callable[[PointT], str] = str,
        report: Callable[[Any], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ResultT:
        """One point whose task reports as it goes: ``task(shared, point, send)``; returns its result.

        Every ``send(event)`` of the task is passed to ``report(event)`` in the caller's thread, in
        order, while the point runs. ``should_stop()`` is polled; when it returns True the point is
        cancelled and :class:`~fpgm_core.evaluation.EvaluationCancelled` raised. This default runs it
        in this process and thread (``point_should_stop()`` gives the task ``should_stop``); the
        inline and local-process executors use it (one point gains nothing from a worker process),
        Ray runs it on a worker as a generator task.
        """
        started = time.perf_counter()
        token = _POINT_STOP.set(should_stop)
        try:
            if should_stop is not None and should_stop():
                raise EvaluationCancelled("stopped")
            result = task(shared, point, report if report is not None else _ignore)
        finally:
            _POINT_STOP.reset(token)
        self._record(1, started, {this_process(): 1})
        return result

    def reports(self) -> list[RunReport]:
        """The recent runs' reports, oldest first."""
        return list(self._reports)

    def _record(self, points: int, started: float, placements: Counter[Placement] | dict[Placement, int]) -> None:
        self._reports.append(RunReport(self.describe(), points, time.perf_counter() - started, dict(placements),
                                       time.monotonic()))

    def close(self) -> None:
        """Release what the executor holds (worker processes, a cluster it started); it may not run again."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs the points one after another in this process and thread (the default)."""

    name = "inline"

    def describe(self) -> str:
        return "in this process"

    def run(self, task, shared, points, *, label=str, progress=None, should_stop=None):
        started = time.perf_counter()
        results = []
        token = _POINT_STOP.set(should_stop)
        try:
            for done, point in enumerate(points, start=1):
                if should_stop is not None and should_stop():
                    raise EvaluationCancelled("stopped")
                results.append(task(shared, point))
                if progress is not None:
                    progress(done, len(points), label(point))
        finally:
            _POINT_STOP.reset(token)
        self._record(len(points), started, {this_process(): len(points)} if points else {})
        return results


INLINE = InlineExecutor()
