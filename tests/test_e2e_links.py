"""Shareable links in a real browser: a view set in one browser, its URL opened in a fresh one.

Each browser context is a separate user (its own cookies and session); ``page.goto`` and
``page.reload`` start a new Streamlit session from the URL, as pasting a link or pressing F5 does.
Set ``SCREENSHOT_DIR`` to also save a screenshot of a link opened fresh, and of a bad link's notice.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest

from test_e2e_browser import TIMEOUT_MS, go, idle, plan_line, shoot

PAGES = {"model": "Model", "heatmaps": "Filter distances", "sparsity": "Sparsity", "export": "Export",
         "evaluate": "Evaluate", "finetune": "Fine-tune", "explainer": "How FPGM works"}


@pytest.fixture
def fresh_context(browser):
    """Factory: a new browser context (a user who has never opened the dashboard) and a tab in it."""
    contexts = []

    def open_tab():
        context = browser.new_context(viewport={"width": 1500, "height": 1100})
        contexts.append(context)
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        return tab

    yield open_tab
    for context in contexts:
        context.close()


def query(tab) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(urlparse(tab.url).query, keep_blank_values=True).items()}


def wait_for_query(tab, **expected: str) -> None:
    """Wait until the address bar carries ``expected`` (the server writes the URL after each run)."""
    tab.wait_for_function(
        """expected => { const params = new URLSearchParams(window.location.search);
                          return Object.entries(expected).every(([name, value]) => params.get(name) === value); }""",
        arg=expected,
    )


def radio(tab, label: str, option: str):
    return tab.locator('[data-testid="stRadio"]', has_text=label).get_by_text(option, exact=True)


def checked_option(tab, label: str) -> str:
    """The option a radio group shows as chosen."""
    group = tab.locator('[data-testid="stRadio"]', has_text=label)
    return group.locator("label:has(input:checked)").inner_text().strip()


def slider_value(tab, label: str) -> str:
    return tab.locator('[data-testid="stSlider"]', has_text=label).get_by_role("slider").input_value()


def selected_layer(tab) -> str:
    """The option the Layer box shows (its combobox's text)."""
    return tab.locator('[data-testid="stSelectbox"]', has_text="Layer").get_by_role("combobox").input_value()


def press_slider_to(tab, label: str, target: int) -> None:
    slider = tab.locator('[data-testid="stSlider"]', has_text=label).get_by_role("slider")
    for _ in range(60):
        value = int(slider.input_value())
        if value == target:
            return
        slider.press("ArrowRight" if value < target else "ArrowLeft")
        tab.wait_for_timeout(60)
    assert int(slider.input_value()) == target


def check_view(tab) -> None:
    """The view the first browser set: Sparsity page, global mode at 40 %, L1; Heatmaps on layer1.conv1 by index."""
    tab.get_by_role("heading", name="Sparsity", exact=True, level=1).wait_for()
    idle(tab)
    assert urlparse(tab.url).path == "/sparsity"
    assert slider_value(tab, "Global sparsity") == "40"
    assert checked_option(tab, "Mode") == "global ranking" and checked_option(tab, "Metric") == "L1"
    assert plan_line(tab) == "Plan: 40% · global ranking · L1 · ≤ 90% per layer"
    assert tab.locator('[data-testid="stAlertContentWarning"]').count() == 0  # a good link has no notice


def test_a_copied_link_opens_the_same_view_in_a_fresh_browser_and_a_refresh_keeps_it(fresh_context, streamlit_server):
    first = fresh_context()
    first.goto(streamlit_server)
    idle(first)
    first.get_by_role("heading", name="Filter distances", exact=True, level=1).wait_for()
    assert urlparse(first.url).path == "/heatmaps"  # the root hands over to the Heatmaps page's own URL
    first.locator('[data-testid="stSelectbox"]', has_text="Layer").click()
    first.get_by_role("option", name=re.compile(r"^layer1\.conv1 ")).click()
    idle(first)
    radio(first, "Metric", "L1").click()
    idle(first)
    radio(first, "Order", "index").click()
    idle(first)
    press_slider_to(first, "Global sparsity", 40)
    idle(first)
    wait_for_query(first, layer="layer1.conv1", metric="l1", order="index", sparsity="40")
    go(first, "Sparsity")
    radio(first, "Mode", "global ranking").click()
    idle(first)
    wait_for_query(first, mode="global", cap="90")
    link = first.url
    assert query(first) == {"model": "demo", "weights": "default", "layer": "layer1.conv1", "metric": "l1", "order": "index",
                            "projection": "PCA", "sparsity": "40", "mode": "global", "cap": "90"}

    second = fresh_context()
    second.goto(link)
    check_view(second)
    shoot(second, "shared-link-sparsity")
    second.reload()
    check_view(second)
    assert query(second) == query(first)
    go(second, "Heatmaps")
    assert selected_layer(second).startswith("layer1.conv1 ")
    assert checked_option(second, "Metric") == "L1" and checked_option(second, "Order") == "index"
    assert slider_value(second, "Global sparsity") == "40"
    assert second.get_by_text(re.compile(r"· plan 40% · global ranking · L1")).is_visible()
    shoot(second, "shared-link-heatmaps")


def test_every_pages_url_opened_directly_shows_that_page_with_the_links_view(fresh_context, streamlit_server):
    for path, heading in PAGES.items():
        tab = fresh_context()
        tab.goto(f"{streamlit_server}/{path}?sparsity=35&metric=cosine")
        tab.get_by_role("heading", name=heading, exact=True, level=1).wait_for()
        idle(tab)
        assert urlparse(tab.url).path == f"/{path}", path
        assert tab.get_by_text("Page not found").count() == 0, path
        assert tab.locator('[data-testid="stException"]').count() == 0, path
        assert plan_line(tab) == "Plan: 35% · per layer (uniform) · cosine", path
        assert query(tab)["sparsity"] == "35", path
        tab.context.close()


def test_a_bad_link_opens_the_defaults_with_a_notice_naming_each_bad_value(fresh_context, streamlit_server):
    tab = fresh_context()
    tab.goto(f"{streamlit_server}/?model=resnet999&sparsity=abc&metric=l9&order=index")
    tab.get_by_role("heading", name="Filter distances", exact=True, level=1).wait_for()
    idle(tab)
    notice = tab.locator('[data-testid="stAlertContentWarning"]').inner_text()
    for named in ("model='resnet999'", "sparsity='abc'", "metric='l9'", "start from their defaults"):
        assert named in notice
    assert plan_line(tab) == "Plan: 30% · per layer (uniform) · L2"
    assert checked_option(tab, "Order") == "index"  # the good value of a bad link still counts
    assert tab.locator('[data-testid="stSidebar"]').get_by_text("demo digits CNN · bundled weights").is_visible()
    wait_for_query(tab, model="demo", sparsity="30", metric="l2", order="index")  # the URL now says what is shown
    shoot(tab, "shared-link-notice")
    radio(tab, "Metric", "cosine").click()  # a rerun of the same page keeps the notice
    idle(tab)
    assert tab.locator('[data-testid="stAlertContentWarning"]').count() == 1
    go(tab, "Sparsity")
    assert tab.locator('[data-testid="stAlertContentWarning"]').count() == 0

    uploaded = fresh_context()
    uploaded.goto(f"{streamlit_server}/export?model=onnx&sparsity=60&layer=features.0")
    uploaded.get_by_role("heading", name="Export", exact=True, level=1).wait_for()
    idle(uploaded)
    notice = uploaded.locator('[data-testid="stAlertContentWarning"]').inner_text()
    assert "made with an uploaded ONNX model, which a link cannot carry" in notice
    assert "upload the file again on the Model page" in notice
    assert plan_line(uploaded) == "Plan: 60% · per layer (uniform) · L2"
