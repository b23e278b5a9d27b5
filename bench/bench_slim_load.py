"""Benchmark: how long other sessions wait while one session slims ResNet-50 — this code beside an older one.

    python bench/bench_slim_load.py [--before REF] [--sessions 4] [--rounds 2] [--json FILE]

Starts the real dashboard server (``streamlit run app.py``) and one headless-Chromium session that
loads torchvision's resnet50 (random init), sets 30 % sparsity and presses "Slim the model" on the
Export page (analysis, surgery, verification and the latency runs at batch 1 and 32). While that
slim runs, ``--sessions`` other sessions each upload their own demo weights (a new model for the
server: fresh scores, FLOP count and fx trace), open the Sparsity and Export pages and download the
masked checkpoint — ``--rounds`` times over, or until the slim is done. Each of their actions is
timed until the page is idle again.

With ``--before REF`` the same run is first made on that commit (checked out with ``git worktree``
into a temporary folder, same Python), where ``MODEL_LOCK`` was held for the whole slim: the table
puts the two side by side. Browsers and server share this machine, so quote ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
TIMEOUT_MS = 1_800_000  # the old code holds every session back for the whole slim: minutes on 2 busy cores


@dataclass
class Run:
    label: str
    slim_s: float = 0.0
    responses: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _server(root: Path, log: Path) -> Iterator[str]:
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(root / "app.py"), "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1"],
            cwd=root, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def _checkout(ref: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="fpgm-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), ref], cwd=ROOT, check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, capture_output=True)


async def _idle(page) -> None:
    await page.wait_for_selector(IDLE)


async def _go(page, title: str) -> None:
    await page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    await page.get_by_role("heading", name=title, exact=True, level=1).wait_for()
    await _idle(page)


async def _set_sparsity(page, percent: int) -> None:
    slider = page.locator('[data-testid="stSlider"]', has_text="Global sparsity").get_by_role("slider")
    for _ in range(200):
        await _idle(page)
        value = int(await slider.input_value())
        if value == percent:
            return
        await slider.press("ArrowRight" if value < percent else "ArrowLeft")
        await page.wait_for_timeout(40)
    raise AssertionError(f"the slider did not settle at {percent}%")


async def _slimmer(browser, url: str, started: asyncio.Event, run: Run) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        await page.goto(url)
        await _idle(page)
        await _go(page, "Model")
        # The source's label: "torchvision architecture" in older trees, "torchvision" since timm joined it.
        await page.get_by_text(re.compile(r"^torchvision( architecture)?$")).click()
        await _idle(page)
        box = page.locator('[data-testid="stSelectbox"]', has_text="Architecture")
        await box.click()
        await page.keyboard.type("resnet50")
        await page.get_by_role("option", name="resnet50", exact=True).click()
        await _idle(page)
        await page.get_by_text("random init", exact=True).click()
        await _idle(page)
        await page.get_by_role("button", name="Load resnet50").click()
        await page.locator('[data-testid="stAlertContentSuccess"]').first.wait_for()
        await _idle(page)
        await _go(page, "Sparsity")
        await _set_sparsity(page, 30)
        await _go(page, "Export")
        await page.get_by_role("button", name="Slim the model").click()
        await page.get_by_text("Slimming the model and measuring it").wait_for()
        start = time.perf_counter()
        started.set()
        await page.locator('[data-testid="stDataFrame"]').first.wait_for()
        await page.get_by_text("Slimming the model and measuring it").wait_for(state="detached")
        await _idle(page)
        run.slim_s = time.perf_counter() - start
    except Exception as exc:  # reported with the figures, not raised: the other sessions' times still count
        run.errors.append(f"slimming session: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        started.set()
    finally:
        await context.close()


async def _timed(run: Run, action: str, coroutine) -> None:
    start = time.perf_counter()
    await coroutine
    run.responses.setdefault(action, []).append(time.perf_counter() - start)


async def _loader(browser, url: str, weights: list[Path], done: asyncio.Event, run: Run, folder: Path) -> None:
    from playwright.async_api import expect

    for path in weights:
        if done.is_set():
            return
        context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            await _timed(run, "first page", page.goto(url))
            await _idle(page)
            await _go(page, "Model")
            await page.get_by_text("Upload a file", exact=True).click()
            await page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
            load = page.get_by_role("button", name="Load the uploaded weights")
            await expect(load).to_be_enabled(timeout=TIMEOUT_MS)
            await _idle(page)

            async def upload() -> None:
                await load.click()
                await page.locator('[data-testid="stAlertContentSuccess"]', has_text=f"Loaded {path.name}").wait_for()
                await _idle(page)

            await _timed(run, "load own demo weights", upload())
            await _timed(run, "open Sparsity", _go(page, "Sparsity"))
            await _timed(run, "open Export", _go(page, "Export"))

            async def download() -> None:
                async with page.expect_download() as info:
                    await page.get_by_role("button", name="demo-fpgm.safetensors", exact=True).click()
                await (await info.value).save_as(folder / f"{path.stem}.safetensors")

            await _timed(run, "download checkpoint", download())
        except Exception as exc:  # one failed round is a result; the others go on
            run.errors.append(f"loading session ({path.name}): {type(exc).__name__}: {str(exc).splitlines()[0]}")
        finally:
            await context.close()


async def _run(url: str, sessions: int, rounds: int, folder: Path, run: Run) -> None:
    from playwright.async_api import async_playwright

    import torch
    from safetensors.torch import save_file

    from fpgm_core.demo import DemoNet

    weights: list[list[Path]] = []
    for session in range(sessions):
        paths = []
        for round_ in range(rounds):
            torch.manual_seed(1000 * session + round_)
            path = folder / f"demo-s{session}-r{round_}.safetensors"
            save_file(DemoNet().state_dict(), str(path))
            paths.append(path)
        weights.append(paths)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            started, done = asyncio.Event(), asyncio.Event()
            slim = asyncio.create_task(_slimmer(browser, url, started, run))
            await started.wait()
            loaders = [asyncio.create_task(_loader(browser, url, paths, done, run, folder)) for paths in weights]
            await slim
            done.set()
            await asyncio.gather(*loaders)
        finally:
            await browser.close()


def measure(label: str, root: Path, sessions: int, rounds: int) -> Run:
    run = Run(label)
    with tempfile.TemporaryDirectory() as scratch, _server(root, Path(scratch) / "server.log") as url:
        asyncio.run(_run(url, sessions, rounds, Path(scratch), run))
    return run


def _row(run: Run, action: str) -> str:
    times = run.responses.get(action, [])
    if not times:
        return "— | — | 0"
    return f"{statistics.median(times):.1f} | {max(times):.1f} | {len(times)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a git ref to measure first, e.g. the commit before the lock change")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="loads per session while the slim runs (at most)")
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    args = parser.parse_args()
    runs = []
    if args.before:
        with _checkout(args.before) as before:
            runs.append(measure(f"before ({args.before})", before, args.sessions, args.rounds))
    runs.append(measure("after (this tree)", ROOT, args.sessions, args.rounds))
    print(f"{os.cpu_count()} CPUs; {args.sessions} sessions load their own demo weights while one slims resnet50 at 30 %\n")
    actions = sorted({a for run in runs for a in run.responses}, key=lambda a: list(runs[-1].responses).index(a) if a in runs[-1].responses else 99)
    print("| code | slim s | action | median s | worst s | count |")
    print("|---|---:|---|---:|---:|---:|")
    for run in runs:
        for action in actions:
            print(f"| {run.label} | {run.slim_s:.0f} | {action} | {_row(run, action)} |")
    for run in runs:
        for error in run.errors:
            print(f"{run.label}: {error}")
    if args.json:
        Path(args.json).write_text(json.dumps([run.__dict__ for run in runs], indent=2))


if __name__ == "__main__":
    main()
