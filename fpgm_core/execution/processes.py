"""Points on local worker processes (``processes:N``): one machine's cores, without a cluster.

Workers are *spawned* (a fresh interpreter each): forking a process that has started torch's
thread pools can deadlock the child. A script that uses them must therefore guard its entry
point (``if __name__ == "__main__":``), as with any spawned multiprocessing.

The workers live as long as the executor (one interpreter start each, not one per run). The
shared value is pickled once per shared object into a file of a private temporary folder; each
worker reads it once and keeps it for every later point of the same value, so a point ships only
its own small arguments and result.

A stop, an error or a worker that dies ends the pool: outstanding points are cancelled and the
worker processes terminated, so nothing keeps running after :meth:`ProcessExecutor.run` returns.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..evaluation import EvaluationCancelled
from .base import Executor, ExecutorError, this_process

__all__ = ["ProcessExecutor"]

# How often a waiting run checks should_stop.
_POLL_S = 0.2
# On a worker: (key, value) of the last shared value read.
_worker_shared: tuple[str, Any] | None = None


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_in_worker(task, key: str, path: str, point):
    global _worker_shared
    if _worker_shared is None or _worker_shared[0] != key:
        _worker_shared = None  # let the previous value go before the next is read
        with open(path, "rb") as file:
            _worker_shared = (key, pickle.load(file))
    return task(_worker_shared[1], point), this_process()


class ProcessExecutor(Executor):
    """Runs points on ``processes`` local worker processes, ``threads`` torch threads each."""

    name = "processes"

    def __init__(self, processes: int, *, threads: int | None = None) -> None:
        super().__init__()
        if int(processes) < 1:
            raise ExecutorError(f"processes:{processes}: give at least one worker process")
        self._processes = int(processes)
        if threads is None:
            import torch

            # Split this process's threads among the workers rather than oversubscribe the cores.
            threads = max(1, torch.get_num_threads() // self._processes)
        self._threads = int(threads)
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._folder: str | None = None
        # (the shared object, its key, the file holding it)
        self._shared: tuple[Any, str, str] | None = None

    @property
    def workers(self) -> int:
        return self._processes

    def describe(self) -> str:
        return f"in {self._processes} local worker process{'es' if self._processes != 1 else ''}"

    def _start_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self._threads,))
        return self._pool

    def _share(self, shared) -> tuple[str, str]:
        """(key, file) of ``shared``, written once per shared object."""
        if self._shared is not None and self._shared[0] is shared:
            return self._shared[1], self._shared[2]
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="fpgm-shared-")  # readable by this user only
            # Removed at close(), or when the executor is collected or the process exits without one.
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        key = uuid.uuid4().hex
        path = os.path.join(self._folder, f"{key}.pickle")
        # Plain pickle, not multiprocessing's: its torch reductions would move the caller's
        # tensors into shared memory (changing the caller's model in place).
        with open(path, "wb") as file:
            pickle.dump(shared, file, protocol=pickle.HIGHEST_PROTOCOL)
        if self._shared is not None:
            # No run is under way (runs hold the lock): no worker still needs the previous file.
            os.unlink(self._shared[2])
        self._shared = (shared, key, path)
        return key, path

    def _end_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # Python 3.11 has no ProcessPoolExecutor.terminate_workers (3.14): terminate them directly,
        # so that a running point does not keep its core busy after a stop.
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def run(self, task, shared, points, *, label=str, progress=None, should_stop=None):
        started = time.perf_counter()
        if not points:
            return []
        # One run at a time per executor: the pool belongs to one shared value.
        with self._lock:
            key, path = self._share(shared)
            pool = self._start_pool()
            futures: dict[Future, int] = {pool.submit(_run_in_worker, task, key, path, point): i
                                          for i, point in enumerate(points)}
            results: list[Any] = [None] * len(points)
            placements: Counter = Counter()
            pending = set(futures)
            done = 0
            finished = False
            try:
                while pending:
                    if should_stop is not None and should_stop():
                        raise EvaluationCancelled("stopped")
                    ready, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                    for future in sorted(ready, key=futures.get):
                        try:
                            result, where = future.result()
                        except BrokenProcessPool as exc:
                            raise ExecutorError(
                                f"a worker process died while computing {label(points[futures[future]])} "
                                "(killed, or out of memory); nothing was kept"
                            ) from exc
                        index = futures[future]
                        results[index] = result
                        placements[where] += 1
                        done += 1
                        if progress is not None:
                            progress(done, len(points), label(points[index]))
                finished = True
            finally:
                if not finished:
                    self._end_pool()
        self._record(len(points), started, placements)
        return results

    def close(self) -> None:
        with self._lock:
            self._end_pool()
            self._shared = None
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None
