"""Fixtures for the dashboard's tests: an AppTest factory, a real Streamlit server, headless Chromium.

The server and the browser are started once per test session and stopped by their own handles.
Chromium is the system one (``/usr/bin/chromium``, or ``$CHROMIUM``): Playwright's own browser
download is not used. Without it the browser tests skip with the reason, except in CI
(``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pytest
import torch
from streamlit.runtime.media_file_manager import MediaFileManager

from load_sessions import APP, CHROMIUM, CHROMIUM_ARGS, Server, ServerError, running_dashboard


@pytest.fixture
def downloads(monkeypatch) -> dict[str, object]:
    """What the page's download buttons would serve, by file name (bytes, or the deferred callable)."""
    served: dict[str, object] = {}
    add, add_deferred = MediaFileManager.add, MediaFileManager.add_deferred

    def record(self, path_or_data, mimetype, coordinates, file_name=None, is_for_static_download=False):
        if file_name:
            served[file_name] = path_or_data
        return add(self, path_or_data, mimetype, coordinates, file_name, is_for_static_download)

    def record_deferred(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        served[file_name] = data_callable
        return add_deferred(self, data_callable, mimetype, coordinates, file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add", record)
    monkeypatch.setattr(MediaFileManager, "add_deferred", record_deferred)
    return served


@pytest.fixture
def new_app():
    """Factory: a fresh session of the dashboard (AppTest), run once, optionally on ``page``."""
    from streamlit.testing.v1 import AppTest

    def start(page: str | None = None):
        app = AppTest.from_file(str(APP), default_timeout=120).run()
        assert not app.exception, app.exception
        if page is not None:
            app.switch_page(page).run()
            assert not app.exception, app.exception
        return app

    return start


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run in CI)")
    pytest.skip(reason)


@contextlib.contextmanager
def _running_server(log: Path, **options) -> Iterator[Server]:
    """A dashboard server on a free localhost port; a server that does not start fails the test."""
    try:
        with running_dashboard(log, **options) as server:
            yield server
    except ServerError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def streamlit_server(tmp_path_factory):
    """Base URL of one dashboard server shared by the browser tests."""
    with _running_server(tmp_path_factory.mktemp("streamlit") / "server.log") as server:
        yield server.url


@pytest.fixture
def fresh_dashboard(tmp_path) -> Iterator[Server]:
    """A dashboard server that no session has visited yet: its URL, process id and log."""
    with _running_server(tmp_path / "server.log") as server:
        yield server


@pytest.fixture
def slowed_dashboard(tmp_path) -> Iterator[Server]:
    """A dashboard server whose widget callbacks are slowed down (``tests/slowed_streamlit.py``)."""
    with _running_server(tmp_path / "server.log", callback_delay_s=0.5) as server:
        yield server


@pytest.fixture
def fresh_streamlit_server(fresh_dashboard):
    """Base URL of a dashboard server that no session has visited yet."""
    return fresh_dashboard.url


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The system Chromium and Playwright, present (else a skip, or a failure in CI)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        _skip_or_fail("playwright is not installed")
    if not CHROMIUM.exists():
        _skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set $CHROMIUM)")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium):
    """Headless system Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        except Exception as exc:  # a broken install fails here with Playwright's own error types
            _skip_or_fail(f"Chromium at {chromium} did not start: {exc}")
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread: the demo's 8×8 convolutions are too small to
    split, and on a busy machine two intra-op threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
