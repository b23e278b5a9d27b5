"""How fast the dashboard answers on resnet50 (random init, CPU), against the issue's three budgets.

(a) model chosen → first heatmap, server-side        budget 3 s
    engine + figures in this process, and the same through Streamlit's AppTest (Model page
    "Load" run + Heatmaps page run, caches cold);
(b) slider change → updated summary, server-side     budget 300 ms
    plan masks + cost estimate from cached scores, and a whole Sparsity page rerun in AppTest;
(c) a 2048-filter heatmap visible in the browser      budget 1.5 s
    real Streamlit server + headless Chromium: from choosing layer4.x.conv3 in the layer
    selectbox until its heatmap image is on screen.

Run:  .venv/bin/python bench/bench_dashboard.py [--skip-browser] [--repeats N]
Not a test: it prints a table (measured, budget, measured/budget) and exits 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import fpgm_core  # noqa: E402
from dashboard.figures import filter_order, heatmap_figure, kernel_figure, projection_figure, score_figure  # noqa: E402
from dashboard.projections import pca_2d  # noqa: E402
from dashboard.sources import ModelSource, build_source  # noqa: E402
from dashboard.summary import summarize  # noqa: E402

ARCH = "resnet50"
BIG_LAYERS = ("layer4.2.conv3", "layer4.0.conv3")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
rows: list[tuple[str, float, float | None]] = []


def record(what: str, seconds: float, budget: float | None) -> None:
    rows.append((what, seconds, budget))
    print(f"  {what}: {seconds * 1000:.0f} ms", flush=True)


def engine_first_heatmap() -> None:
    """(a) in-process: build the model, score and measure its first layer, build the page's figures."""
    start = time.perf_counter()
    loaded = build_source(ModelSource("torchvision", ARCH, "none"), "cpu")
    built = time.perf_counter()
    layers = fpgm_core.prunable_layers(loaded.model)
    first = layers[0].name
    module = dict(loaded.model.named_modules())[first]
    scores = fpgm_core.layer_scores(loaded.model, "l2", device="cpu", names=[first])[first]
    counts = fpgm_core.plan_counts(layers, fpgm_core.SparsityPlan(sparsity=0.3))
    keep = fpgm_core.mask_from_scores(scores, counts[first]).numpy()
    matrix = fpgm_core.distance_matrix(module.weight, "l2", device="cpu").numpy()
    order = filter_order(scores.numpy(), True)
    heatmap_figure(matrix, keep, order, metric="L2", by_score=True)[0].to_json()
    score_figure(scores.numpy(), keep, order, by_score=True).to_json()
    projection_figure(pca_2d(module.weight), keep, scores.numpy(), method="PCA").to_json()
    kernel_figure(module.weight.detach().numpy(), keep).to_json()
    done = time.perf_counter()
    record(f"(a) engine: build {ARCH} ({built - start:.2f} s) + first heatmap page figures", done - start, 3.0)


def engine_slider(repeats: int) -> None:
    """(b) in-process: what a slider move recomputes, from scores/FLOPs/producers computed once."""
    loaded = build_source(ModelSource("torchvision", ARCH, "none"), "cpu")
    scores = fpgm_core.layer_scores(loaded.model, "l2", device="cpu")
    flops = fpgm_core.layer_flops(loaded.model, loaded.input_shape)
    producers = fpgm_core.input_producers(loaded.model)
    for mode in ("uniform", "global"):
        times = []
        for step in range(repeats):
            plan = fpgm_core.SparsityPlan(sparsity=0.1 + 0.8 * step / max(repeats - 1, 1), mode=mode)
            start = time.perf_counter()
            summarize(loaded.model, plan, scores, loaded.input_shape, flops, producers)
            times.append(time.perf_counter() - start)
        record(f"(b) engine: slider → masks + costs, {mode} mode (median of {repeats})", statistics.median(times), 0.3)


def apptest_paths(repeats: int) -> None:
    """(a) and (b) through Streamlit's AppTest: whole script runs, caches cold for (a)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()
    st.cache_data.clear()
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    app.switch_page("pages/model.py").run()
    app.radio(key="source_kind").set_value("torchvision").run()
    app.selectbox(key="tv_arch").set_value(ARCH)
    app.radio(key="tv_weights").set_value("none").run()
    start = time.perf_counter()
    app.button[0].click().run()
    loaded = time.perf_counter()
    app.switch_page("pages/heatmaps.py").run()
    done = time.perf_counter()
    assert not app.exception, app.exception
    assert app.session_state["workspace"].source.arch == ARCH
    record(f"(a) AppTest: Load click run ({loaded - start:.2f} s) + Heatmaps page run", done - start, 3.0)

    app.switch_page("pages/sparsity.py").run()  # scores every layer once (cached from here on)
    for mode in ("uniform", "global"):
        app.radio(key="mode").set_value(mode).run()
        times = []
        for step in range(repeats):
            app.slider(key="sparsity_pct").set_value(10 + (step * 70) // max(repeats - 1, 1))
            start = time.perf_counter()
            app.run()
            times.append(time.perf_counter() - start)
        assert not app.exception, app.exception
        record(f"(b) AppTest: slider → whole Sparsity page rerun, {mode} (median of {repeats})", statistics.median(times), 0.3)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def browser_paths() -> None:
    """(c) a real server and headless Chromium."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        print(f"  (c) skipped: no Chromium at {CHROMIUM}")
        return
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(url)
            idle(page)
            page.locator('[data-testid="stSidebarNav"] a', has_text="Model").click()
            idle(page)
            page.get_by_text("torchvision architecture").click()
            idle(page)
            choose(page, "Architecture", ARCH)
            page.get_by_text("random init").click()
            idle(page)
            start = time.perf_counter()
            page.get_by_role("button", name=f"Load {ARCH}").click()
            page.get_by_text(f"Loaded {ARCH}").wait_for(timeout=120_000)
            page.locator('[data-testid="stSidebarNav"] a', has_text="Heatmaps").click()
            heatmap_visible(page, "conv1")
            record("(a) browser: Load click → Heatmaps page with conv1's heatmap visible", time.perf_counter() - start, 3.0)
            idle(page)
            for layer in BIG_LAYERS:
                for metric in ("L2", "cosine"):
                    if metric == "cosine":
                        page.locator(".stRadio", has_text="Metric").get_by_text("cosine").click()
                        idle(page)
                        choose(page, "Layer", "conv1 ")
                        idle(page)
                    start = choose(page, "Layer", layer)
                    heatmap_visible(page, layer)
                    record(f"(c) browser: choose {layer} (2048 filters, {metric}) → heatmap visible", time.perf_counter() - start, 1.5)
                    idle(page)
                    page.locator(".stRadio", has_text="Metric").get_by_text("L2", exact=True).click()
                    idle(page)
                    choose(page, "Layer", "conv1 ")
                    idle(page)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def heatmap_visible(page, layer: str) -> None:
    """Wait until the heatmap panel shows ``layer``'s matrix (heatmap cells or its image) on screen."""
    page.wait_for_function(
        """layer => { const chart = document.querySelector('.st-key-heatmap_panel .js-plotly-plot');
                       const drawn = chart && chart.querySelector('.heatmaplayer image, .imagelayer image');
                       return drawn && chart.layout.meta && chart.layout.meta.layer === layer
                              && drawn.getBoundingClientRect().width > 0; }""",
        arg=layer, timeout=120_000,
    )


def idle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)


def choose(page, label: str, option: str) -> float:
    """Pick ``option`` in the selectbox labelled ``label`` by typing it, as a user would.

    Returns the moment of the choosing click, so that typing is not timed.
    """
    box = page.locator('[data-testid="stSelectbox"]', has_text=label).first
    box.click()
    page.keyboard.type(option.strip())
    target = page.locator('[role="option"]', has_text=option.strip()).first
    target.wait_for(state="visible")
    clicked = time.perf_counter()
    target.click()
    return clicked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__} · {torch.get_num_threads()} threads · {ARCH} random init on CPU")
    engine_first_heatmap()
    engine_slider(args.repeats)
    apptest_paths(args.repeats)
    if not args.skip_browser:
        browser_paths()
    print()
    print(f"{'measurement':<88} {'measured':>9} {'budget':>7} {'ratio':>6}")
    for what, seconds, budget in rows:
        ratio = f"{seconds / budget:.2f}" if budget else ""
        print(f"{what:<88} {seconds * 1000:>7.0f}ms {budget * 1000 if budget else 0:>5.0f}ms {ratio:>6}")


if __name__ == "__main__":
    main()
