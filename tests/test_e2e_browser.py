"""End to end in a real browser: a Streamlit server on a free port and headless Chromium (Playwright).

Visits every page of one browser session as a user would (sidebar links, the slider by keyboard,
real downloads) and checks that the downloaded checkpoint loads with ``strict=True`` and holds
zeros exactly at the filters the downloaded masks prune. Set ``SCREENSHOT_DIR`` to also save a
screenshot of each page there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from safetensors.torch import load_file

import fpgm_core

SCREENSHOTS = os.environ.get("SCREENSHOT_DIR")
TIMEOUT_MS = 90_000
HEADINGS = {"Model": "Model", "Heatmaps": "Filter distances", "Sparsity": "Sparsity", "Export": "Export", "Evaluate": "Evaluate", "How FPGM works": "How FPGM works"}
URL_PATHS = {"How FPGM works": "explainer"}


@pytest.fixture
def page(browser, streamlit_server):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(streamlit_server)
    yield tab
    context.close()


def idle(page) -> None:
    """Wait until the app is drawn and its script has finished running."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')


def go(page, title: str) -> None:
    """Open a page through the sidebar, in the same session, and check that it drew without errors."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    page.wait_for_url(re.compile(URL_PATHS.get(title, title.lower())))
    idle(page)
    page.get_by_role("heading", name=HEADINGS[title], exact=True, level=1).wait_for()
    assert page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count() == 0


def heatmap_shown(page, layer: str) -> None:
    page.wait_for_function(
        """layer => { const chart = document.querySelector('.st-key-heatmap_panel .js-plotly-plot');
                       return chart && chart.layout && chart.layout.meta && chart.layout.meta.layer === layer
                              && chart.querySelector('.heatmaplayer, .imagelayer image'); }""",
        arg=layer,
    )
    assert page.locator(".st-key-heatmap_panel .js-plotly-plot").is_visible()


def metric(page, label: str) -> str:
    return page.locator('[data-testid="stMetric"]', has_text=label).locator('[data-testid="stMetricValue"]').inner_text()


def plan_line(page) -> str:
    """The sidebar's "Plan: …" line: the plan the server holds, which every export uses."""
    return page.locator('[data-testid="stSidebar"]').get_by_text(re.compile(r"^Plan: ")).inner_text()


def shoot(page, name: str) -> None:
    """Save a screenshot of the page as shown, once every chart on it is drawn (only with SCREENSHOT_DIR)."""
    if not SCREENSHOTS:
        return
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    page.mouse.move(1, 1)  # no hover labels or plotly toolbar in the picture
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
                    .every(chart => chart.querySelector('.js-plotly-plot .main-svg'))"""
    )
    page.wait_for_timeout(1000)  # plotly's transitions
    page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


def test_a_session_from_heatmap_to_download(page, tmp_path):
    idle(page)
    heatmap_shown(page, "conv1")
    assert page.get_by_text("5 of 16 filters pruned").is_visible()
    shoot(page, "heatmaps")

    go(page, "Model")
    assert metric(page, "Prunable layers") == "7"
    shoot(page, "model")

    go(page, "Sparsity")
    layers = fpgm_core.prunable_layers(fpgm_core.build_model("demo", "default").model)
    total = sum(layer.filters for layer in layers)

    def pruned_at(sparsity: float) -> int:
        return sum(fpgm_core.prune_count(sparsity, layer.filters) for layer in layers if not layer.is_output)

    assert metric(page, "Filters pruned") == f"{pruned_at(0.3)} of {total}"
    slider = page.locator('[data-testid="stSlider"]', has_text="Global sparsity").get_by_role("slider")
    # The keyboard moves the slider one step per press, as a user would; a rerun started by the
    # first presses can redraw the slider, so each press targets it afresh until it reads 40%.
    for _ in range(30):
        if slider.input_value() == "40":
            break
        slider.press("ArrowRight")
        page.wait_for_timeout(60)
    assert slider.input_value() == "40"
    expected_text = f"{pruned_at(0.4)} of {total}"
    page.wait_for_function(
        """text => [...document.querySelectorAll('[data-testid="stMetricValue"]')].some(m => m.innerText === text)""",
        arg=expected_text,
    )
    idle(page)
    assert metric(page, "Filters pruned") == expected_text
    shoot(page, "sparsity")

    go(page, "Heatmaps")
    heatmap_shown(page, "conv1")
    assert page.get_by_text("6 of 16 filters pruned").is_visible()

    go(page, "Export")
    shoot(page, "export")
    files = {}
    for name in ("demo-fpgm.safetensors", "demo-fpgm.masks.safetensors", "demo-fpgm.recipe.json"):
        with page.expect_download() as download:
            page.get_by_role("button", name=name).click()
        files[name] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[name])
        assert files[name].name == name

    model = fpgm_core.build_model("demo", "none").model
    model.load_state_dict(load_file(str(files["demo-fpgm.safetensors"])), strict=True)
    masks = load_file(str(files["demo-fpgm.masks.safetensors"]))
    original = fpgm_core.build_model("demo", "default").model
    expected = fpgm_core.plan_masks(original, fpgm_core.SparsityPlan(sparsity=0.4), device="cpu")
    assert masks.keys() == expected.keys()
    modules, originals = dict(model.named_modules()), dict(original.named_modules())
    for name, keep in masks.items():
        assert torch.equal(keep, expected[name]), name
        weight = modules[name].weight.detach()
        assert bool((weight[~keep] == 0).all()), name
        assert torch.equal(weight[keep], originals[name].weight.detach()[keep]), name
    recipe = fpgm_core.read_recipe(files["demo-fpgm.recipe.json"])
    assert recipe["global_sparsity"] == pytest.approx(0.4)
    assert sum(entry["pruned"] for entry in recipe["layers"].values()) == pruned_at(0.4)

    # The physically smaller model: slim, wait for its verified export, load the .pt2 without unpickling.
    page.get_by_role("button", name="Slim the model").click()
    slim_pt2 = page.get_by_role("button", name="demo-fpgm-slim.pt2", exact=True)
    slim_pt2.wait_for()
    idle(page)
    assert page.get_by_text("Verification passed").is_visible()
    slim_pt2.scroll_into_view_if_needed()
    shoot(page, "export-slim")
    with page.expect_download() as download:
        slim_pt2.click()
    pt2 = tmp_path / download.value.suggested_filename
    download.value.save_as(pt2)
    assert pt2.name == "demo-fpgm-slim.pt2"
    program = torch.export.load(str(pt2))
    assert program.module()(torch.zeros(1, 1, 8, 8)).shape[0] == 1

    go(page, "Evaluate")
    shoot(page, "evaluate")
    go(page, "How FPGM works")
    shoot(page, "explainer")


def test_the_export_follows_a_slider_pressed_just_before_leaving_the_page(browser, slowed_dashboard, tmp_path):
    """Press the slider, then open Export while the press's rerun is still running: the export, the
    sidebar and the downloaded recipe must have the slider's value.

    This is how "slider 25 %, exported recipe 24 %" happened under load. Before the state model
    kept one key per value, the slider's callback copied its value to the plan; the click stopped
    that callback's run midway, the Export run that followed carried the same slider value, so
    the callback never ran again and Export used the old plan (5 of 5 tries on the old code). The
    server here slows callbacks down (``tests/slowed_streamlit.py``) so that the click lands inside
    one on any machine; the slider itself has no callback now.
    """
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    try:
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(slowed_dashboard.url)
        idle(tab)
        for attempt in range(3):
            go(tab, "Sparsity")
            slider = tab.locator('[data-testid="stSlider"]', has_text="Global sparsity").get_by_role("slider")
            slider.press("ArrowRight")
            value = slider.input_value()
            tab.wait_for_timeout(150)  # the press's run is under way
            go(tab, "Export")
            shown = tab.get_by_text(re.compile(r"· plan \d+%")).first.inner_text()
            assert f"plan {value}%" in shown, f"try {attempt}: the slider showed {value}%, Export says {shown!r}"
            assert plan_line(tab).startswith(f"Plan: {value}%")
        with tab.expect_download() as download:
            tab.get_by_role("button", name="demo-fpgm.recipe.json", exact=True).click()
        recipe = tmp_path / "recipe.json"
        download.value.save_as(recipe)
        assert fpgm_core.read_recipe(recipe)["global_sparsity"] == pytest.approx(int(value) / 100)
    finally:
        context.close()


def test_a_deep_link_on_a_fresh_server_opens_that_page(browser, fresh_streamlit_server):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    try:
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(f"{fresh_streamlit_server}/sparsity")
        idle(tab)
        tab.get_by_role("heading", name="Sparsity", exact=True, level=1).wait_for()
        assert urlparse(tab.url).path == "/sparsity"
        assert tab.get_by_text("Working on").is_visible()  # the entry script ran: sidebar and state exist
        assert tab.locator('[data-testid="stException"]').count() == 0
        assert metric(tab, "Filters pruned").startswith("45 of")
    finally:
        context.close()
