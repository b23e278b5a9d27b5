"""AppTest helpers for pages whose work runs in background jobs (dashboard/jobs.py)."""

from __future__ import annotations

import time


def running_jobs(app) -> list:
    """The session's jobs that have not ended."""
    jobs = app.session_state["jobs"] if "jobs" in app.session_state else {}
    return [job for job in jobs.values() if job.running]


def finish_jobs(app, timeout: float = 300):
    """Wait for the session's background jobs to end, then rerun the page so it shows their outcome.

    A job that had already ended was collected by the page's last run (its fragment reruns the
    page when the work is over), which showed the outcome: then there is nothing to rerun.
    """
    deadline = time.monotonic() + timeout
    waiting = running_jobs(app)
    for job in waiting:
        assert job.wait(max(deadline - time.monotonic(), 0.1)), f"job {job.name} still running after {timeout} s"
    if waiting:
        app.run()
    assert not app.exception, app.exception
    return app
