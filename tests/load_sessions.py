"""Many browser sessions at once against one dashboard server: the driver behind the load test and its benchmark.

Each session is its own Chromium browser context (own cookies, own websocket, so its own Streamlit
session). It does what a user sharing a class server would do: uploads its *own* model weights on
the Model page, moves the global-sparsity slider to its *own* value, and downloads the checkpoint,
masks and recipe on the Export page. Because every session's weights and sparsity differ, a download
that carries another session's weights, masks or plan is caught by :func:`check_downloads`.

The server's resident memory is sampled all along (``/proc/PID/status``). Used by
``tests/test_load.py`` (assertions) and ``bench/bench_load.py`` (figures for the README).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

import fpgm_core

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
STEM = "demo-fpgm"
EXPORTS = (f"{STEM}.safetensors", f"{STEM}.masks.safetensors", f"{STEM}.recipe.json")
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


class ServerError(RuntimeError):
    """The dashboard server did not start or did not answer."""


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_dashboard(log: Path, *, startup_s: float = 90, script_args: Sequence[str] = (),
                      env: Mapping[str, str] | None = None, callback_delay_s: float | None = None) -> Iterator[Server]:
    """``streamlit run app.py [-- script_args]`` on a free localhost port, with the project's config; stopped on exit.

    ``env`` is added to the server's environment; ``callback_delay_s`` slows each session-state
    access of widget callbacks by that much (``tests/slowed_streamlit.py``).
    """
    port = _free_port()
    streamlit = ["-m", "streamlit"] if callback_delay_s is None else [str(ROOT / "tests" / "slowed_streamlit.py")]
    server_env = {**os.environ, **(env or {})}
    if callback_delay_s is not None:
        server_env["FPGM_CALLBACK_DELAY_S"] = str(callback_delay_s)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *streamlit, "run", str(APP), "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1", *(["--", *script_args] if script_args else [])],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=server_env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise ServerError(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise ServerError(f"streamlit did not answer on {url} within {startup_s:.0f} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.25)
        yield Server(url, process.pid, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class MemorySampler:
    """Samples a process's resident memory every ``interval`` seconds in a thread; ``peak_mb`` is the highest."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peak_mb = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb(self.pid))


@dataclass(frozen=True)
class SessionPlan:
    """What one session does: upload ``weights`` (a demo-model state_dict file) and prune ``sparsity_pct``."""

    index: int
    weights: Path
    sparsity_pct: int


@dataclass
class SessionResult:
    plan: SessionPlan
    downloads: dict[str, Path] = field(default_factory=dict)
    # Seconds from a user action to the page being drawn and idle again, by action.
    response_s: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # What the slider showed when the session left the Sparsity page for its export.
    slider_pct: int | None = None


def session_weights(index: int) -> dict[str, torch.Tensor]:
    """A demo-model state_dict of its own for session ``index``: a seeded random initialisation."""
    torch.manual_seed(1000 + index)
    return {name: value.detach().clone().contiguous() for name, value in fpgm_core.build_model("demo", "none").model.state_dict().items()}


def make_plans(sessions: int, folder: Path, *, first_index: int = 0) -> list[SessionPlan]:
    """``sessions`` plans numbered from ``first_index``, each with its own weights file in ``folder``
    and its own sparsity (10 %, 15 %, … 75 %, then round again)."""
    folder.mkdir(parents=True, exist_ok=True)
    plans = []
    for index in range(first_index, first_index + sessions):
        path = folder / f"session-{index}.safetensors"
        save_file(session_weights(index), str(path))
        plans.append(SessionPlan(index, path, 10 + (5 * index) % 70))
    return plans


async def _idle(page) -> None:
    await page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')


async def _timed(result: SessionResult, action: str, coroutine) -> None:
    start = time.perf_counter()
    try:
        await coroutine
    except Exception as exc:
        raise _ActionFailed(action) from exc
    result.response_s[action] = time.perf_counter() - start


class _ActionFailed(Exception):
    """A session's action did not finish; its cause is the Playwright error."""


async def _go(page, title: str, heading: str) -> None:
    await page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    await page.get_by_role("heading", name=heading, exact=True, level=1).wait_for()
    await _idle(page)


async def _errors_shown(page, where: str) -> list[str]:
    shown = page.locator(ERRORS)
    return [f"{where}: {await shown.nth(i).inner_text()}" for i in range(await shown.count())]


async def _upload(page, plan: SessionPlan, timeout_ms: int) -> None:
    from playwright.async_api import expect

    await page.get_by_text("Upload a file", exact=True).click()
    await page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(plan.weights))
    load = page.get_by_role("button", name="Load the uploaded weights")
    # The button is enabled once the upload has reached the server (the shown name is shortened).
    await expect(load).to_be_enabled(timeout=timeout_ms)
    await _idle(page)
    await load.click()
    await page.locator('[data-testid="stAlertContentSuccess"]', has_text=f"Loaded {plan.weights.name}").wait_for()
    await _idle(page)


# A fast user's pace on the keyboard: the next press comes as soon as the sidebar shows the last
# one's plan, often while that rerun is still drawing the page; between presses at least this long.
PRESS_GAP_MS = 30
PLAN_CAPTION = '[data-testid="stSidebar"] [data-testid="stCaptionContainer"]'


async def _plan_shows(page, percent: int | str, timeout_ms: float | None = None) -> None:
    """Wait until the sidebar's "Plan: N%" line (drawn by the server before the page) shows ``percent``."""
    await page.wait_for_function(
        """([selector, prefix]) => [...document.querySelectorAll(selector)].some(c => c.innerText.startsWith(prefix))""",
        arg=[PLAN_CAPTION, f"Plan: {percent}%"], **({} if timeout_ms is None else {"timeout": timeout_ms}),
    )


async def _set_sparsity(page, percent: int) -> None:
    """Move the global slider to ``percent`` by keyboard, as a fast user does, and check the plan follows.

    After every press the sidebar's "Plan: N%" line must show the slider's new value; the next
    press follows at once, not after the rerun has finished. At the end, with the page idle, the
    slider must read ``percent`` and the plan must still be ``percent``.
    """
    slider = page.locator('[data-testid="stSlider"]', has_text="Global sparsity").get_by_role("slider")
    value = int(await slider.input_value())
    for _ in range(200):
        if value == percent:
            break
        await slider.press("ArrowRight" if value < percent else "ArrowLeft")
        value = int(await slider.input_value())
        await _plan_shows(page, value)
        await page.wait_for_timeout(PRESS_GAP_MS)
    else:
        raise AssertionError(f"the slider did not reach {percent}%")
    await _idle(page)
    if int(await slider.input_value()) != percent:
        raise AssertionError(f"the slider moved back to {await slider.input_value()}% after reaching {percent}%")
    await _plan_shows(page, percent, timeout_ms=5_000)


async def _download_all(page, folder: Path, result: SessionResult) -> None:
    for name in EXPORTS:
        async with page.expect_download() as info:
            await page.get_by_role("button", name=name, exact=True).click()
        download = await info.value
        target = folder / download.suggested_filename
        try:
            await download.save_as(target)
        except Exception as exc:
            raise AssertionError(f"{name}: {await download.failure() or exc}") from exc
        result.downloads[name] = target


async def _session(browser, url: str, plan: SessionPlan, folder: Path, timeout_ms: int) -> SessionResult:
    result = SessionResult(plan)
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    try:
        page = await context.new_page()
        page.set_default_timeout(timeout_ms)
        # A failed request (a download the server no longer has, a missing script) is an error
        # even where the page itself looks fine.
        page.on("response", lambda response: response.status >= 400 and result.errors.append(
            f"HTTP {response.status} for {response.request.method} {response.url}"))
        await _timed(result, "first page", page.goto(url))
        await _idle(page)
        await _timed(result, "open Model", _go(page, "Model", "Model"))
        await _timed(result, "upload and load", _upload(page, plan, timeout_ms))
        result.errors += await _errors_shown(page, "Model")
        await _timed(result, "open Sparsity", _go(page, "Sparsity", "Sparsity"))
        await _timed(result, "set sparsity", _set_sparsity(page, plan.sparsity_pct))
        result.slider_pct = int(await page.locator('[data-testid="stSlider"]', has_text="Global sparsity")
                                .get_by_role("slider").input_value())
        result.errors += await _errors_shown(page, "Sparsity")
        await _timed(result, "open Export", _go(page, "Export", "Export"))
        result.errors += await _errors_shown(page, "Export")
        line = await page.locator(PLAN_CAPTION, has_text="Plan: ").first.inner_text()
        if not line.startswith(f"Plan: {result.slider_pct}%"):
            result.errors.append(f"Export: the sidebar says {line!r} after the slider showed {result.slider_pct}%")
        await _timed(result, "download 3 files", _download_all(page, folder, result))
    except _ActionFailed as failed:  # a session's failure is its result; the others go on
        cause = failed.__cause__
        result.errors.append(f"{failed.args[0]}: {type(cause).__name__}: {str(cause).splitlines()[0]}")
        # What the user would have seen, for whoever reads the failure.
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(folder / "failed.png"))
    finally:
        await context.close()
    return result


async def _all_sessions(url: str, plans: list[SessionPlan], folder: Path, timeout_ms: int) -> list[SessionResult]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            return await asyncio.gather(*(
                _session(browser, url, plan, folder / f"session-{plan.index}", timeout_ms) for plan in plans
            ))
        finally:
            await browser.close()


def run_sessions(url: str, plans: list[SessionPlan], folder: Path, *, timeout_ms: int = 180_000) -> list[SessionResult]:
    """Run every plan as its own concurrent browser session; downloads go under ``folder``.

    Runs in a thread of its own, so it works beside Playwright's sync API (which owns the caller's
    event loop, e.g. in pytest).
    """
    for plan in plans:
        (folder / f"session-{plan.index}").mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _all_sessions(url, plans, folder, timeout_ms)).result()


def check_downloads(result: SessionResult) -> list[str]:
    """What is wrong with a session's downloads, judged against its own weights and its own plan.

    The masks must be FPGM's for this session's weights at this session's sparsity, the checkpoint
    this session's weights with exactly those filters zeroed, and the recipe this plan on these weights.
    """
    plan = result.plan
    missing = [name for name in EXPORTS if name not in result.downloads]
    if missing:
        return [f"session {plan.index}: no download of {', '.join(missing)}"]
    problems = []
    model = fpgm_core.build_model("demo", "none").model
    model.load_state_dict(load_file(str(plan.weights)), strict=True)
    expected = fpgm_core.plan_masks(model, fpgm_core.SparsityPlan(sparsity=plan.sparsity_pct / 100), device="cpu")
    masks = load_file(str(result.downloads[EXPORTS[1]]))
    if masks.keys() != expected.keys() or any(not torch.equal(masks[k], expected[k]) for k in expected):
        problems.append(f"session {plan.index}: masks are not FPGM's for its weights at {plan.sparsity_pct}%")
    checkpoint = load_file(str(result.downloads[EXPORTS[0]]))
    masked = fpgm_core.apply_masks(model, expected).state_dict()
    if checkpoint.keys() != masked.keys() or any(not torch.equal(checkpoint[k], masked[k]) for k in masked):
        problems.append(f"session {plan.index}: checkpoint is not its own weights masked by its own plan")
    recipe = fpgm_core.read_recipe(result.downloads[EXPORTS[2]])
    if abs(recipe["global_sparsity"] - plan.sparsity_pct / 100) > 1e-9:
        problems.append(f"session {plan.index}: recipe sparsity {recipe['global_sparsity']} ≠ {plan.sparsity_pct / 100}")
    # What the user saw: the demo prunes the same counts at neighbouring sparsities (24 % and 25 %),
    # so only the recipe's own number tells whether the export followed the slider.
    if result.slider_pct is None or abs(recipe["global_sparsity"] - result.slider_pct / 100) > 1e-9:
        problems.append(f"session {plan.index}: recipe sparsity {recipe['global_sparsity']} is not the slider's "
                        f"{result.slider_pct}%")
    if recipe["model"]["fingerprint"] != fpgm_core.model_fingerprint(model):
        problems.append(f"session {plan.index}: recipe fingerprint is another model's")
    return problems


def server_errors(log: Path) -> list[str]:
    """Error lines the server logged (tracebacks, exceptions)."""
    return [line for line in log.read_text(errors="replace").splitlines() if re.search(r"Traceback|Error|Exception", line)]


def response_summary(results: list[SessionResult]) -> dict[str, float]:
    """Median and worst response over every action of every session, and the worst per action."""
    times = [seconds for result in results for seconds in result.response_s.values()]
    per_action: dict[str, float] = {}
    for result in results:
        for action, seconds in result.response_s.items():
            per_action[action] = max(per_action.get(action, 0.0), seconds)
    return {"median_s": statistics.median(times), "worst_s": max(times), **{f"worst {a}": s for a, s in per_action.items()}}
