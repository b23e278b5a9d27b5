"""Points on local worker processes (``processes:N``): one machine's cores, without a cluster.

Workers are *spawned* (a fresh interpreter each): forking a process that has started torch's
thread pools can deadlock the child. The shared value is pickled once per run of a new shared
object and handed to every worker when it starts, so each point ships only its own small
arguments and result. The pool is kept while the same shared object is passed again (a plan
suggestion verifies many small batches over one model) and replaced for a new one.

A stop, an error or a worker that dies ends the pool: outstanding points are cancelled and the
worker processes terminated, so nothing keeps running after :meth:`ProcessExecutor.run` returns.
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..evaluation import EvaluationCancelled
from .base import Executor, ExecutorError, this_process

__all__ = ["ProcessExecutor"]

# How often a waiting run checks should_stop.
_POLL_S = 0.2
# The worker's copy of the shared value (one per worker process).
_WORKER_SHARED: Any = None


def _start_worker(payload: bytes, threads: int) -> None:
    global _WORKER_SHARED
    import torch

    torch.set_num_threads(threads)
    _WORKER_SHARED = pickle.loads(payload)


def _run_in_worker(task, point):
    return task(_WORKER_SHARED, point), this_process()


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
        self._pool_shared: Any = None

    @property
    def workers(self) -> int:
        return self._processes

    def describe(self) -> str:
        return f"in {self._processes} local worker process{'es' if self._processes != 1 else ''}"

    def _pool_for(self, shared) -> ProcessPoolExecutor:
        if self._pool is not None and self._pool_shared is shared:
            return self._pool
        self._end_pool()
        # Plain pickle, not multiprocessing's: its torch reductions would move the caller's
        # tensors into shared memory (changing the caller's model in place).
        payload = pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
        self._pool = ProcessPoolExecutor(
            self._processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(payload, self._threads),
        )
        self._pool_shared = shared
        return self._pool

    def _end_pool(self) -> None:
        pool, self._pool, self._pool_shared = self._pool, None, None
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
            pool = self._pool_for(shared)
            futures: dict[Future, int] = {pool.submit(_run_in_worker, task, point): i for i, point in enumerate(points)}
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
