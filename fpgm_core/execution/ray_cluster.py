"""Points on a Ray cluster (``ray``, ``ray:ADDRESS``): many machines' cores through Ray's task model.

Every point is one Ray task (one CPU each by default, so a cluster of N CPUs runs N at once). The
shared value is put in Ray's object store once per shared object; each worker fetches it once
and keeps it for every later point of the same value, so a point ships only its own small
arguments and result. This package (``fpgm_core``) is shipped to a cluster's workers with the
job (Ray's ``py_modules``), so cluster nodes need the same torch and torchvision, not this code.

Connecting, on first use (``connect``, ``workers``, ``describe`` or ``run``):

* with an address (or ``RAY_ADDRESS``): ``ray.init(address=…)``. Ray's drivers run on a node of
  the cluster: on a machine outside it, join it first (``ray start --address=HEAD:6379
  --num-cpus=0`` runs no tasks there). The address is checked with a plain TCP connection
  first, so an address nobody listens on fails in seconds, not after Ray's minute of retries.
* without: a Ray started on this machine with all its cores, bound to 127.0.0.1 only.

Token authentication stays on. A Ray started here enables it and makes a token in
``~/.ray/auth_token`` (Ray's default). Connecting to a cluster sets ``RAY_AUTH_MODE=token`` unless
it is set, and refuses to start without a token (``RAY_AUTH_TOKEN``, the file named by
``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``) rather than let Ray retry for seconds.

Faults: a worker that dies is replaced and its point retried (``max_retries``); a stop, a
task's error or any exception in the caller cancels every outstanding task and waits until they
have ended, so nothing keeps running after :meth:`RayExecutor.run` returns.

Ray is optional: it is imported only here, and only when a RayExecutor is first used.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import FpgmError
from ..evaluation import EvaluationCancelled
from .base import _POINT_STOP, Executor, ExecutorError, this_process

__all__ = ["RayExecutor", "token_source"]

# How often a waiting run checks should_stop and reports finished points.
_POLL_S = 0.2
# The TCP check of an address, and Ray's GCS connection attempts (about one per second).
_CONNECT_TIMEOUT_S = 3.0
# How long cancelled tasks get to end before their workers are killed.
_CANCEL_WAIT_S = 5.0
_INSTALL_HINT = "pip install -r requirements-cluster.txt (ray==2.60.0)"

_PACKAGE = Path(__file__).resolve().parents[1]


def _runtime_env(local: bool) -> dict:
    """How the workers find this package.

    On a cluster it travels with the job (Ray uploads it once, by content hash; only a job-level
    runtime env can upload), so nodes need torch and torchvision but not this code. A Ray started
    here has its workers on this machine: they import it from where this process does (an upload
    would also be lost when a second local Ray starts in the same process).
    """
    if local:
        path = os.pathsep.join(filter(None, [str(_PACKAGE.parent), os.environ.get("PYTHONPATH")]))
        return {"env_vars": {"PYTHONPATH": path}}
    return {"py_modules": [str(_PACKAGE)]}

# One Ray connection per process (ray.init is process-wide), shared by every RayExecutor.
_connection_lock = threading.Lock()
_connection: dict[str, Any] = {"users": 0, "started_here": False, "owned": False}

# On a worker: (object id, value) of the last shared value fetched.
_worker_shared: tuple[str, Any] | None = None


def _run_point(task, holder, point):
    """A Ray task: ``task(shared, point)`` and where it ran; ``holder[0]`` is the shared value's ref.

    The ref comes inside a list so that Ray does not fetch it for every task: the worker keeps
    the value of the last ref it fetched.
    """
    return task(_fetch_shared(holder), point), this_process()


def _fetch_shared(holder):
    """On a worker: the value of the shared ref ``holder[0]``, fetched once per ref."""
    global _worker_shared
    ref = holder[0]
    key = ref.hex()
    if _worker_shared is None or _worker_shared[0] != key:
        import ray

        _worker_shared = None  # let the previous value go before the next arrives
        _worker_shared = (key, ray.get(ref))
    return _worker_shared[1]


_END = object()


def _stream_point(task, holder, point):
    """A Ray generator task: ``("event", e)`` for every ``send(e)`` of ``task(shared, point, send)``,
    then ``("result", result, where)``.

    The task runs in a thread of its own, so that this generator can yield its events as they come.
    When the generator ends early (a cancel raises KeyboardInterrupt here) the task is asked to stop
    (``point_should_stop()``) and waited for, so nothing runs on after the task has ended.
    """
    shared = _fetch_shared(holder)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def body() -> None:
        _POINT_STOP.set(stop.is_set)  # this thread's own context
        try:
            outcome["result"] = task(shared, point, events.put)
        except BaseException as exc:  # raised below, in the task's place
            outcome["error"] = exc
        finally:
            events.put(_END)

    thread = threading.Thread(target=body, name="fpgm-stream-point", daemon=True)
    thread.start()
    try:
        while True:
            try:
                event = events.get(timeout=_POLL_S)  # a timeout keeps the wait interruptible by a cancel
            except queue.Empty:
                continue
            if event is _END:
                break
            yield "event", event
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        yield "result", outcome["result"], this_process()
    finally:
        stop.set()
        thread.join()


def token_source() -> str | None:
    """Where this process's Ray authentication token comes from, or None if it has none.

    The same places Ray looks, in its order: ``RAY_AUTH_TOKEN``, the file named by
    ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``.
    """
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = Path(named).expanduser()
        return f"RAY_AUTH_TOKEN_PATH={named}" if path.is_file() and path.read_text().strip() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() and default.read_text().strip() else None


def _import_ray(*, local: bool):
    """The ray module, with this process's Ray settings in place before Ray reads them."""
    if "ray" not in sys.modules:
        # Ray reads both when imported. Token mode for clients too: without it a client sends no
        # token and Ray retries for 20 s before saying it could not connect.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        if local:
            # Ray otherwise replaces 127.0.0.1 by the machine's network address and listens there.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(f"Ray is not installed, so points cannot run on a Ray cluster: {_INSTALL_HINT}") from exc
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` (the Ray started here by `ray start`)."""
    if address == "auto":
        return None
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorError(f"{address!r} is not a Ray address: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    return host, int(port)


def _check_reachable(address: str) -> None:
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ExecutorError(
            f"cannot reach the Ray cluster at {address}: {reason} (is its head running, `ray start --head`, "
            "and is the port open from here?)"
        ) from exc


@contextmanager
def _connect_attempts(count: int) -> Iterator[None]:
    """Limit Ray's GCS connection attempts (one a second) unless the user set their own."""
    name = "RAY_gcs_server_port_wait_time_s"
    if name in os.environ:
        yield
        return
    os.environ[name] = str(count)
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _same_host_port(a: str, b: str) -> bool:
    try:
        ha, hb = _host_port(a), _host_port(b)
    except ExecutorError:
        return False
    if ha is None or hb is None:
        return a == b
    try:
        return ha[1] == hb[1] and socket.gethostbyname(ha[0]) == socket.gethostbyname(hb[0])
    except OSError:
        return ha == hb


def _error_chain(exc: BaseException) -> str:
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


class RayExecutor(Executor):
    """Runs points as Ray tasks on the cluster at ``address`` (``RAY_ADDRESS``; None: a Ray started here).

    Args:
        cpus_per_task: CPUs each point reserves (its torch threads, as Ray sets OMP_NUM_THREADS).
        gpus_per_task: GPUs each point reserves (0.5: two points share a GPU).
        max_retries: times a point is retried when its worker or node dies.
        local_cpus: CPUs of a Ray started here (default: all).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        cpus_per_task: float = 1,
        gpus_per_task: float = 0,
        max_retries: int = 3,
        local_cpus: int | None = None,
    ) -> None:
        super().__init__()
        address = address if address is not None else os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            address = address.strip()
            if not address:
                raise ExecutorError("empty Ray address: give HOST:PORT, or plain `ray` for a Ray on this machine")
            _host_port(address)
        if cpus_per_task <= 0 or gpus_per_task < 0 or max_retries < 0:
            raise ExecutorError("cpus_per_task must be > 0, gpus_per_task and max_retries ≥ 0")
        self._address = address
        self._cpus, self._gpus, self._retries, self._local_cpus = cpus_per_task, gpus_per_task, max_retries, local_cpus
        self._lock = threading.Lock()
        self._connected = False
        self._remote = None
        self._streaming = None
        self._shared: tuple[Any, Any] | None = None

    # --- connection -------------------------------------------------------------------------

    @property
    def address(self) -> str | None:
        """The cluster's address once connected (the GCS address), else the one given."""
        if self._connected:
            import ray

            return ray.get_runtime_context().gcs_address
        return self._address

    @property
    def started_here(self) -> bool:
        """Whether the Ray this executor uses was started by it on this machine."""
        return self._connected and _connection["started_here"]

    def connect(self) -> None:
        """Connect (or start a local Ray) now; ExecutorError, within seconds, if that fails."""
        with self._lock:
            if self._connected:
                return
            local = self._address is None
            if not local:
                # Before anything else: an address nobody listens on fails in seconds.
                _check_reachable(self._address)
            ray = _import_ray(local=local)
            with _connection_lock:
                if ray.is_initialized():
                    current = ray.get_runtime_context().gcs_address
                    if not local and not _same_host_port(self._address, current):
                        raise ExecutorError(
                            f"this process is already connected to the Ray cluster at {current}; "
                            f"it cannot also use {self._address} (one cluster per process)"
                        )
                else:
                    self._init(ray)
                _connection["users"] += 1
            self._remote = ray.remote(_run_point).options(
                num_cpus=self._cpus, num_gpus=self._gpus, max_retries=self._retries, retry_exceptions=False,
            )
            # No retries for streams: a retried stream would report its events twice.
            self._streaming = ray.remote(_stream_point).options(
                num_cpus=self._cpus, num_gpus=self._gpus, max_retries=0, num_returns="streaming",
            )
            self._connected = True

    def _init(self, ray) -> None:
        if self._address is None:
            try:
                ray.init(num_cpus=self._local_cpus, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False, runtime_env=_runtime_env(local=True))
            except Exception as exc:
                ray.shutdown()
                raise ExecutorError(f"could not start Ray on this machine: {exc}") from exc
            _connection.update(started_here=True, owned=True)
            return
        disabled = os.environ.get("RAY_AUTH_MODE", "token").lower() == "disabled"
        if not disabled and token_source() is None:
            raise ExecutorError(
                f"no Ray authentication token for the cluster at {self._address}: set RAY_AUTH_TOKEN, or "
                "RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token "
                "(`ray get-auth-token` on the head node prints it)"
            )
        try:
            with _connect_attempts(int(_CONNECT_TIMEOUT_S)):
                ray.init(address=self._address, logging_level=logging.ERROR, log_to_driver=False,
                         runtime_env=_runtime_env(local=False))
        except Exception as exc:
            ray.shutdown()
            chain = _error_chain(exc)
            if "InvalidAuthToken" in chain or "AuthenticationError" in chain:
                raise ExecutorError(
                    f"the Ray cluster at {self._address} refused this process's authentication token "
                    f"(from {token_source()}): use the cluster's token (`ray get-auth-token` on the head node)"
                ) from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExecutorError(f"could not connect to the Ray cluster at {self._address}: {first}") from exc
        _connection.update(started_here=False, owned=True)

    def close(self) -> None:
        """Let the shared value go; the last executor to close ends the connection (or the local Ray)."""
        with self._lock:
            self._shared = None
            if not self._connected:
                return
            self._connected = False
            with _connection_lock:
                _connection["users"] -= 1
                if _connection["users"] <= 0 and _connection["owned"]:
                    import ray

                    ray.shutdown()
                    _connection.update(users=0, started_here=False, owned=False)

    # --- describing ---------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        self.connect()
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 0) // self._cpus))

    @property
    def nodes(self) -> int:
        """Alive nodes of the cluster."""
        self.connect()
        import ray

        return sum(1 for node in ray.nodes() if node.get("Alive"))

    def describe(self) -> str:
        workers = self.workers
        where = "on a local Ray" if self.started_here else "on the cluster"
        return f"{where} ({workers} worker{'s' if workers != 1 else ''})"

    # --- running ------------------------------------------------------------------------------

    def _share(self, ray, shared):
        with self._lock:
            if self._shared is not None and self._shared[0] is shared:
                return self._shared[1]
            self._shared = None  # the previous value's copy can go
            ref = ray.put(shared)
            self._shared = (shared, ref)
            return ref

    def run(self, task, shared, points, *, label=str, progress=None, should_stop=None):
        started = time.perf_counter()
        if not points:
            return []
        self.connect()
        import ray

        holder = [self._share(ray, shared)]
        refs = [self._remote.remote(task, holder, point) for point in points]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(points)
        placements: Counter = Counter()
        pending = list(refs)
        done = 0
        finished = False
        try:
            while pending:
                if should_stop is not None and should_stop():
                    raise EvaluationCancelled("stopped")
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
                for ref in sorted(ready, key=index.get):
                    i = index[ref]
                    results[i], where = self._result(ray, ref, label(points[i]))
                    placements[where] += 1
                    done += 1
                    if progress is not None:
                        progress(done, len(points), label(points[i]))
            finished = True
        finally:
            if not finished:
                self._cancel(ray, pending)
        self._record(len(points), started, placements)
        return results

    def stream(self, task, shared, point, *, label=str, report=None, should_stop=None):
        """One point as a Ray generator task; its events reach ``report`` as the worker sends them.

        A worker that dies ends the point with an ExecutorError (no retry: its events would repeat).
        """
        started = time.perf_counter()
        self.connect()
        import ray

        generator = self._streaming.remote(task, [self._share(ray, shared)], point)
        finished = False
        try:
            while True:
                if should_stop is not None and should_stop():
                    raise EvaluationCancelled("stopped")
                ready, _ = ray.wait([generator], timeout=_POLL_S)
                if not ready:
                    continue
                try:
                    ref = next(generator)
                except StopIteration:
                    # The generator ended without its result: its task failed; its error says why.
                    self._result(ray, generator.completed(), label(point))
                    raise ExecutorError(f"{label(point)} ended on the cluster without a result") from None
                kind, *values = self._result(ray, ref, label(point))
                if kind == "event":
                    if report is not None:
                        report(values[0])
                    continue
                result, where = values
                finished = True
                break
        finally:
            if not finished:
                self._cancel_stream(ray, generator)
        self._record(1, started, {where: 1})
        return result

    @staticmethod
    def _cancel_stream(ray, generator) -> None:
        """Cancel a generator task and wait until it has ended (killing its worker if it does not stop)."""
        ray.cancel(generator)
        done = generator.completed()
        ready, _ = ray.wait([done], timeout=_CANCEL_WAIT_S, fetch_local=False)
        if not ready:
            ray.cancel(generator, force=True)
            ray.wait([done], timeout=_CANCEL_WAIT_S, fetch_local=False)

    def _result(self, ray, ref, what: str):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # The task's own exception (bad input, a stop inside it): raised as itself.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (FpgmError, EvaluationCancelled)):
                raise cause from None
            raise
        except ray.exceptions.RayError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExecutorError(f"{what} could not be computed on the cluster ({type(exc).__name__}: {first})") from exc

    @staticmethod
    def _cancel(ray, refs) -> None:
        """Cancel ``refs`` and wait until none of them runs (killing workers that do not stop)."""
        if not refs:
            return
        for ref in refs:
            ray.cancel(ref)
        _, left = ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_WAIT_S, fetch_local=False)
        if left:
            for ref in left:
                ray.cancel(ref, force=True)
            ray.wait(left, num_returns=len(left), timeout=_CANCEL_WAIT_S, fetch_local=False)
