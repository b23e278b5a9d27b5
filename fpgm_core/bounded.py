"""Run third-party analysis under a time limit, and stop it when it runs over.

Torch-Pruning's group search can run for ever on some models (timm's rexnet_100). A Python thread
cannot be killed, so the work runs in a daemon worker thread and the caller waits at most the
limit. On time-out the worker gets an asynchronous exception (CPython's
``PyThreadState_SetAsyncExc``), which ends pure-Python loops such as that search at their next
bytecode; a worker stuck inside one long C call stops when the call returns. Until then it keeps
a core busy on its private copy of the model — so the bounded work must hold no lock and touch
nothing shared (the callers run their fx traces, which take the model lock, outside it).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import types
from typing import Callable, TypeVar

__all__ = ["TimeLimitExceeded", "run_bounded"]

_T = TypeVar("_T")
_GRACE_S = 5.0  # how long a stopped worker gets to unwind before we report it as still running


class _Abandoned(BaseException):
    """Raised inside an over-running worker; a BaseException so that ``except Exception`` cannot swallow it."""


class TimeLimitExceeded(Exception):
    """Bounded work ran over its limit; ``where`` describes where the worker was, ``stopped`` whether it ended."""

    def __init__(self, seconds: float, where: str | None, stopped: bool) -> None:
        super().__init__(f"did not finish within {seconds:g} s")
        self.seconds = seconds
        self.where = where
        self.stopped = stopped


def _interrupt(thread: threading.Thread) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned))


def run_bounded(
    function: Callable[[], _T],
    seconds: float,
    *,
    describe: Callable[[types.FrameType], str | None] | None = None,
    name: str = "fpgm-bounded",
) -> _T:
    """``function()`` run in a worker thread: its result or its exception, or TimeLimitExceeded after ``seconds``.

    ``describe`` turns the worker's innermost frame at the time-out into words for the error.
    """
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["value"] = function()
        except _Abandoned:
            box["abandoned"] = True
        except BaseException as exc:  # handed to the caller with its traceback
            box["error"] = exc

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        frame = sys._current_frames().get(worker.ident)
        where = describe(frame) if describe is not None and frame is not None else None
        del frame  # it holds the worker's locals (a model copy)
        _interrupt(worker)
        worker.join(_GRACE_S)
        raise TimeLimitExceeded(seconds, where, stopped=not worker.is_alive())
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
