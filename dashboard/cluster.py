"""Where the dashboard's long jobs run: in the server process, or on the Ray cluster the server names.

The person starting the server names the cluster with the environment variable
``FPGM_RAY_ADDRESS`` (``HOST:PORT`` of the cluster's head, e.g. ``FPGM_RAY_ADDRESS=10.0.0.5:6379
streamlit run app.py``); the token comes as for any Ray client (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``). Without it nothing changes: jobs run in the
server process. A browser session can never choose where code runs.

One executor per address serves every session of the server (Ray allows one connection per
process). A cluster that cannot be reached is tried again after ``RETRY_AFTER_S``, not on every
rerun; meanwhile its jobs fail with the reason, and nothing is computed elsewhere instead.
"""

from __future__ import annotations

import os
import threading
import time

import streamlit as st

from fpgm_core.execution import INLINE, Executor, ExecutorError, RayExecutor

__all__ = ["RAY_ADDRESS_SETTING", "RETRY_AFTER_S", "job_executor", "show_where_jobs_run", "show_where_finetunes_run"]

# What runs on the cluster when the server names one.
CLUSTER_JOBS = "Sweeps (after fine-tuning too), sensitivity and suggestions"
CLUSTER_FINETUNES = "Fine-tunes"

RAY_ADDRESS_SETTING = "FPGM_RAY_ADDRESS"
RETRY_AFTER_S = 30.0

_lock = threading.Lock()
_executors: dict[str, RayExecutor] = {}
# address → (when it failed, why)
_failures: dict[str, tuple[float, str]] = {}


class _Unavailable(Executor):
    """Stands for a cluster that cannot be used: every run fails with the reason."""

    name = "ray"

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def describe(self) -> str:
        return "on the cluster (unavailable)"

    def run(self, task, shared, points, **_):
        raise ExecutorError(self.reason)

    def stream(self, task, shared, point, **_):
        raise ExecutorError(self.reason)


def _address() -> str | None:
    return os.environ.get(RAY_ADDRESS_SETTING, "").strip() or None


def job_executor() -> Executor:
    """The executor for the long jobs (Evaluate's sweeps and sensitivity, fine-tunes): this process unless the server names a cluster."""
    address = _address()
    if address is None:
        return INLINE
    with _lock:
        failure = _failures.get(address)
        if failure is not None and time.monotonic() - failure[0] < RETRY_AFTER_S:
            return _Unavailable(failure[1])
        try:
            executor = _executors.get(address) or RayExecutor(address)
            executor.connect()
        except ExecutorError as exc:
            reason = f"the Ray cluster at {address} ({RAY_ADDRESS_SETTING}) cannot be used: {exc}"
            _failures[address] = (time.monotonic(), reason)
            return _Unavailable(reason)
        _failures.pop(address, None)
        _executors[address] = executor
        return executor


def _cluster_place() -> tuple[str | None, str | None]:
    """(where the cluster's jobs run, None) or (None, why they cannot); (None, None) without a cluster."""
    address = _address()
    if address is None:
        return None, None
    executor = job_executor()
    if isinstance(executor, _Unavailable):
        return None, f"{executor.reason}. Retried in {RETRY_AFTER_S:.0f} s."
    try:
        return f"{executor.describe()} at {address}", None
    except ExecutorError as exc:
        return None, str(exc)


def show_where_jobs_run() -> None:
    """A caption saying the long jobs run on the cluster (or why they cannot); nothing without a cluster."""
    where, problem = _cluster_place()
    if problem is not None:
        st.error(f"{CLUSTER_JOBS} cannot run: {problem}")
    elif where is not None:
        st.caption(f":material/hub: {CLUSTER_JOBS} run {where}.")


def show_where_finetunes_run() -> None:
    """On the Fine-tune page, with a cluster: the fine-tune runs there (or why it cannot); nothing without one."""
    where, problem = _cluster_place()
    if problem is not None:
        st.error(f"{CLUSTER_FINETUNES} cannot run: {problem}")
    elif where is not None:
        st.caption(f":material/hub: {CLUSTER_FINETUNES} run {where}, on a worker's CPU; every epoch is shown as it ends.")
