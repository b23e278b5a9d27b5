"""Fixtures for the dashboard's tests: an AppTest factory, a real Streamlit server, headless Chromium.

The server and the browser are started once per test session and stopped by their own handles.
Chromium is the system one (``/usr/bin/chromium``, or ``$CHROMIUM``): Playwright's own browser
download is not used. Without it the browser tests skip with the reason, except in CI
(``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run in CI)")
    pytest.skip(reason)


@contextlib.contextmanager
def _running_server(log: Path):
    """``streamlit run app.py`` on a free localhost port: yields its base URL, then stops it."""
    port = _free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not answer on {url} within 90 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def streamlit_server(tmp_path_factory):
    """Base URL of one dashboard server shared by the browser tests."""
    with _running_server(tmp_path_factory.mktemp("streamlit") / "server.log") as url:
        yield url


@pytest.fixture
def fresh_streamlit_server(tmp_path):
    """Base URL of a dashboard server that no session has visited yet."""
    with _running_server(tmp_path / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium driven by Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("playwright is not installed")
    if not CHROMIUM.exists():
        _skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set $CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Exception as exc:  # a broken install fails here with Playwright's own error types
            _skip_or_fail(f"Chromium at {CHROMIUM} did not start: {exc}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread: the demo's 8×8 convolutions are too small to
    split, and on a busy machine two intra-op threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
