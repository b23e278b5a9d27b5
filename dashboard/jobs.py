"""Background jobs for the pages: long work runs in its own thread while the page shows its progress.

A page asks for a job with a button (``on_click=request(name)``); on its next run it starts the
work (:func:`start`) in a daemon thread, so the session stays usable (other pages, other widgets)
and other sessions are not held up by a long script run. While it runs, :func:`watch` draws a
fragment that reruns itself every second: a progress bar, a Stop button and whatever the page
draws live from the job (a chart growing every epoch). When the work ends the fragment reruns the
whole page, which collects the outcome with :func:`finish`: a result, a stop (nothing kept), or an
error shown as a message, never a traceback.

The worker thread never calls Streamlit: it only reports into its :class:`Job` (progress,
records), which the page reads. Finished results that sessions may share go in a bounded store
(:func:`results`), keyed by what they were computed from; per-session results (a fine-tuned
model) stay with the job until the page takes them.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable

import streamlit as st

from fpgm_core import FpgmError
from fpgm_core.evaluation import EvaluationCancelled

__all__ = ["POLL_SECONDS", "Results", "results", "Job", "request", "requested", "start", "job", "watch", "finish", "run"]

POLL_SECONDS = 1.0
# Jobs still running, so that a shutting-down server stops them instead of killing torch mid-kernel.
_RUNNING: "weakref.WeakSet[Job]" = weakref.WeakSet()


class Results:
    """Finished results shared by sessions, keyed by (what, model, data, settings); bounded, least recent out."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The result stored for ``key``, or None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` for ``key``, dropping the least recently used beyond the bound."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


@st.cache_resource
def results() -> Results:
    """The process-wide store of finished evaluation results."""
    # Not st.cache_data: sweeps must be cancellable midway and report progress, which a cached
    # function cannot; finished results are put here instead.
    return Results(48)


class Job:
    """One piece of work in a background thread: its progress, a stop request, and how it ended.

    ``work(job)`` runs in the thread; it reports with :meth:`report` and :meth:`add`, and polls
    :meth:`should_stop`. ``state`` is ``running``, then ``done`` (``result`` set), ``stopped`` (the
    work raised EvaluationCancelled after a stop request) or ``failed`` (``error`` says why).
    """

    def __init__(self, name: str, key: Hashable, label: str, work: Callable[["Job"], Any],
                 store: Results | None = None) -> None:
        self.name, self.key, self.label = name, key, label
        self.state = "running"
        self.fraction = 0.0
        self.text = label
        self.records: list[Any] = []
        self.result: Any = None
        self.error: str | None = None
        self._work = work
        self._store = store
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"fpgm-job-{name}", daemon=True)

    def start(self) -> "Job":
        """Start the work in its thread."""
        _RUNNING.add(self)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            value = self._work(self)
        except EvaluationCancelled:
            self.state = "stopped"
        except FpgmError as exc:
            self.error, self.state = str(exc), "failed"
        except Exception as exc:  # anything else the work raises is shown, not a traceback
            self.error, self.state = f"{type(exc).__name__}: {exc}", "failed"
        else:
            self.result = value
            if self._store is not None:
                self._store.put(self.key, value)
            self.state = "done"

    @property
    def running(self) -> bool:
        """Whether the work has not ended yet."""
        return self.state == "running"

    def report(self, fraction: float, text: str) -> None:
        """From the work: how far it is (0…1) and what it is doing."""
        with self._lock:
            self.fraction, self.text = min(max(float(fraction), 0.0), 1.0), text

    def add(self, record: Any) -> None:
        """From the work: one more record for the page to draw live (e.g. an epoch's metrics)."""
        with self._lock:
            self.records = [*self.records, record]

    def snapshot(self) -> tuple[float, str, list[Any]]:
        """Progress, text and records as they are now, read together."""
        with self._lock:
            return self.fraction, self.text, list(self.records)

    def request_stop(self) -> None:
        """Ask the work to stop at its next check."""
        self._stop.set()

    def should_stop(self) -> bool:
        """For the work: whether a stop was asked for."""
        return self._stop.is_set()

    @property
    def stopping(self) -> bool:
        """A stop was asked for and the work has not ended yet."""
        return self._stop.is_set() and self.running

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work ends (for tests); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


@atexit.register
def _stop_running_jobs() -> None:
    """At interpreter exit: ask running jobs to stop and give them a moment to end at their next check."""
    running = list(_RUNNING)
    for current in running:
        current.request_stop()
    for current in running:
        current.wait(5.0)


def _jobs() -> dict[str, Job]:
    return st.session_state.setdefault("jobs", {})


def request(name: str) -> None:
    """Button callback: start job ``name`` on the page's next run (:func:`requested`)."""
    st.session_state[f"job_request_{name}"] = True


def requested(name: str) -> bool:
    """Whether job ``name`` was asked for since the last call (the request is consumed)."""
    return bool(st.session_state.pop(f"job_request_{name}", False))


def job(name: str) -> Job | None:
    """The session's job called ``name``, running or finished, or None."""
    return _jobs().get(name)


def start(name: str, key: Hashable, label: str, work: Callable[[Job], Any], *, store: Results | None = None) -> Job:
    """Start ``work`` as the session's job ``name`` (one at a time per name); returns the running job."""
    current = job(name)
    if current is not None and current.running:
        return current
    started = Job(name, key, label, work, store).start()
    _jobs()[name] = started
    return started


def finish(name: str) -> Job | None:
    """The session's job ``name`` once it has ended (and forgets it), else None."""
    current = job(name)
    if current is None or current.running:
        return None
    return _jobs().pop(name)


def watch(current: Job, *, live: Callable[[Job], None] | None = None) -> None:
    """Draw the running job's progress, a Stop button and ``live(job)``, refreshed until it ends.

    The fragment reruns itself every :data:`POLL_SECONDS`; when the work has ended it reruns the
    whole page, which then shows the outcome (:func:`finish`).
    """

    @st.fragment(run_every=POLL_SECONDS)
    def progress() -> None:
        if not current.running:
            st.rerun()
        fraction, text, _ = current.snapshot()
        st.progress(fraction, text="Stopping…" if current.stopping else text)
        st.button("Stop", key=f"job_stop_{current.name}", on_click=current.request_stop, icon=":material/stop:",
                  disabled=current.stopping)
        if live is not None:
            live(current)

    progress()


def run(name: str, key: Hashable, label: str, work: Callable[[Callable[[int, int, str], None], Callable[[], bool]], Any]) -> Any:
    """The shared result for ``key``: computed in the background when asked for, with progress and Stop.

    ``work(progress, should_stop)`` is an engine call taking ``progress(done, total, what)`` and
    ``should_stop()``. Returns the stored result, or None while there is none (running, stopped,
    failed: the page has said so).
    """
    store = results()
    found = store.get(key)
    if requested(name) and found is None:
        def adapted(current: Job) -> Any:
            def progress(done: int, total: int, what: str) -> None:
                current.report(done / total if total else 0.0, f"{label} · {done}/{total} · {what}")

            return work(progress, current.should_stop)

        start(name, key, label, adapted, store=store)
    current = job(name)
    if current is not None and current.running:
        watch(current)
        return found
    ended = finish(name)
    if ended is not None and ended.state == "stopped":
        st.info("Stopped. Nothing was kept; run it again to start over.")
    elif ended is not None and ended.state == "failed":
        st.error(ended.error)
    return store.get(key) if found is None else found
