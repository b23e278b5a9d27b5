"""End to end in a real browser: fine-tune on the Fine-tune page, download the result, stop a second run.

A real Streamlit server (its own: torch on one intra-op thread, as the README advises for the demo
on a small machine) and headless Chromium. One session fine-tunes the demo for a few epochs while
the chart grows, downloads the fine-tuned checkpoint and masks from the Export page (checked with
``strict=True`` and zeros at the masked filters), and then starts a long run and stops it midway:
the model, the plan and the first fine-tuned model must be exactly as they were. A second session
loads a page while the first trains. Set ``SCREENSHOT_DIR`` to save screenshots.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fpgm_core
from fpgm_core.evaluation import demo_data
from load_sessions import ServerError, running_dashboard, server_errors

SCREENSHOTS = os.environ.get("SCREENSHOT_DIR")
TIMEOUT_MS = 180_000
STEM = "demo-fpgm-finetuned"
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


@pytest.fixture
def one_thread_server(tmp_path, monkeypatch, chromium):
    """A dashboard server whose torch uses one intra-op thread (the demo's 8×8 convolutions do not split)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        with running_dashboard(tmp_path / "server.log") as server:
            yield server
    except ServerError as exc:
        pytest.fail(str(exc))


def idle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')


def go(page, title: str, heading: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    idle(page)
    page.get_by_role("heading", name=heading, exact=True, level=1).wait_for()


def shoot(page, name: str) -> None:
    if not SCREENSHOTS:
        return
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    page.mouse.move(1, 1)
    page.wait_for_timeout(1200)  # plotly's transitions
    page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def set_number(page, key: str, value: int) -> None:
    field = page.locator(f".st-key-{key} input")
    field.fill(str(value))
    field.press("Enter")
    page.wait_for_function("([key, value]) => document.querySelector(`.st-key-${key} input`).value === value",
                           arg=[key, str(value)])
    idle(page)


def download(page, name: str, folder: Path) -> Path:
    with page.expect_download() as event:
        page.get_by_role("button", name=name, exact=True).click()
    path = folder / event.value.suggested_filename
    event.value.save_as(path)
    assert path.name == name
    return path


def test_fine_tune_in_the_browser_download_it_and_stop_a_second_run(browser, one_thread_server, tmp_path):
    server = one_thread_server
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    other = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url)
        idle(page)
        go(page, "Fine-tune", "Fine-tune")
        assert page.locator(ERRORS).count() == 0
        set_number(page, "ft_epochs", 3)
        page.get_by_role("button", name="Start fine-tuning").click()
        stop = page.locator(".st-key-job_stop_finetune button")
        stop.wait_for()
        # The live chart appears and grows while it trains.
        page.locator(".st-key-ft_live_chart .js-plotly-plot").wait_for()
        shoot(page, "finetune-running")

        # Another session stays usable while this one trains.
        second = other.new_page()
        second.set_default_timeout(TIMEOUT_MS)
        started = time.monotonic()
        second.goto(f"{server.url}/sparsity")
        idle(second)
        second.get_by_role("heading", name="Sparsity", exact=True, level=1).wait_for()
        other_session_s = time.monotonic() - started

        page.get_by_text("The session's fine-tuned model").wait_for()
        idle(page)
        assert page.locator(ERRORS).count() == 0
        top1 = page.locator('[data-testid="stMetric"]', has_text="Held-out top-1, fine-tuned").locator('[data-testid="stMetricValue"]')
        assert float(top1.inner_text().rstrip("%")) >= 97.0
        shoot(page, "finetune")

        go(page, "Export", "Export")
        checkpoint = download(page, f"{STEM}.safetensors", tmp_path)
        masks_file = download(page, f"{STEM}.masks.safetensors", tmp_path)
        page.get_by_role("button", name="Slim the fine-tuned model").click()
        page.get_by_role("button", name=f"{STEM}-slim.pt2", exact=True).wait_for()
        idle(page)
        page.get_by_role("heading", name="Fine-tuned model", exact=True).scroll_into_view_if_needed()
        shoot(page, "export-finetuned")
        slim = download(page, f"{STEM}-slim.pt2", tmp_path)

        model = fpgm_core.build_model("demo", "none").model
        model.load_state_dict(load_file(str(checkpoint)), strict=True)
        masks = load_file(str(masks_file))
        modules = dict(model.named_modules())
        batchnorms = fpgm_core.following_batchnorms(model)
        assert sum(int((~keep).sum()) for keep in masks.values()) == 45  # 30 % of the demo's filters
        for name, keep in masks.items():
            assert bool(modules[name].weight.detach()[~keep].eq(0).all()), name
            if name in batchnorms:
                assert bool(modules[batchnorms[name]].weight.detach()[~keep].eq(0).all()), name
        images = demo_data().images
        with torch.no_grad():
            slimmed, masked = torch.export.load(str(slim)).module()(images), model.eval()(images)
        assert float((slimmed - masked).abs().max()) <= 1e-5 * float(masked.abs().max())

        # A long second run, stopped midway: nothing changes.
        plan_line = page.locator('[data-testid="stSidebar"]').get_by_text("Plan:").inner_text()
        go(page, "Fine-tune", "Fine-tune")
        set_number(page, "ft_epochs", 60)
        page.get_by_role("button", name="Start fine-tuning").click()
        stop.wait_for()
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')]"
                               ".some(bar => bar.innerText.includes('Epoch 1 of 60'))")
        stop.click()
        page.get_by_text("Stopped after").wait_for()
        idle(page)
        assert page.get_by_text("The session's fine-tuned model").is_visible()
        assert page.locator('[data-testid="stSidebar"]').get_by_text("Plan:").inner_text() == plan_line
        go(page, "Export", "Export")
        (tmp_path / "again").mkdir()
        again = download(page, f"{STEM}.safetensors", tmp_path / "again")
        assert again.read_bytes() == checkpoint.read_bytes()
        assert page.locator(ERRORS).count() == 0
    finally:
        context.close()
        other.close()
    assert not server_errors(server.log), server_errors(server.log)
    print(f"another session's page while one trained: {other_session_s:.1f} s")
