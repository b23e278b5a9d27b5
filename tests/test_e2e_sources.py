"""End to end in a real browser: a server started with ``-- --factory …``, an ONNX file uploaded through the
page, its masked ONNX downloaded and checked in onnxruntime, and the server's own model factory loaded.

Set ``SCREENSHOT_DIR`` to save screenshots of the Model and Export pages with the ONNX model.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import factory_models
from load_sessions import ServerError, running_dashboard
from test_e2e_browser import TIMEOUT_MS, go, idle, metric, shoot

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "factory_models:small_net"


@pytest.fixture(scope="module")
def factory_server(tmp_path_factory):
    """A dashboard started as a user names their own code: ``streamlit run app.py -- --factory …``."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        with running_dashboard(tmp_path_factory.mktemp("factory-server") / "server.log", script_args=["--factory", FACTORY],
                               env=env) as server:
            yield server.url
    except ServerError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def page(browser, factory_server):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(f"{factory_server}/model")
    idle(tab)
    yield tab
    context.close()


def _onnx_file(path: Path) -> Path:
    torch.manual_seed(0)
    model = factory_models.SmallNet().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2)
                module.weight.normal_(1, 0.5)
                module.bias.normal_()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, do_constant_folding=False)
    return path


def test_upload_an_onnx_file_and_download_its_masked_graph(page, tmp_path):
    source = _onnx_file(tmp_path / "small.onnx")
    page.get_by_text("Upload a file", exact=True).click()
    idle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(source))
    load = page.get_by_role("button", name="Load the ONNX model")
    load.wait_for()
    idle(page)
    load.click()
    page.locator('[data-testid="stAlertContentSuccess"]', has_text="Loaded small.onnx (ONNX graph)").wait_for()
    idle(page)
    assert page.locator('[data-testid="stSidebar"]').get_by_text("small.onnx · uploaded ONNX graph").is_visible()
    assert page.get_by_text("converted to PyTorch by onnx2torch").is_visible()
    assert metric(page, "Prunable layers") == "3"
    # The page's link carries the view, not the upload (nor its file name), and the sidebar says so.
    page.wait_for_url(lambda url: "model=onnx" in url)
    assert "small" not in page.url and "layer=" not in page.url
    assert page.locator('[data-testid="stSidebar"]').get_by_text("Its link carries the view but not an uploaded ONNX model.").is_visible()
    shoot(page, "model-onnx")

    go(page, "Export")
    assert page.get_by_text("Masked ONNX graph").is_visible()
    shoot(page, "export-onnx")
    files = {}
    for name in ("small-fpgm.onnx", "small-fpgm.masks.safetensors"):
        with page.expect_download() as download:
            page.get_by_role("button", name=name, exact=True).click()
        files[name] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[name])
        assert files[name].name == name

    masks = load_file(str(files["small-fpgm.masks.safetensors"]))
    assert {name: int((~keep).sum()) for name, keep in masks.items()} == {"features/features/0/Conv": 4, "features/features/3/Conv": 5}
    model = onnx.load(str(files["small-fpgm.onnx"]))
    graph = model.graph
    producers = {(node.name.replace(".", "/") or node.op_type).lstrip("/"): node.output[0] for node in graph.node}
    watched = {}
    for layer, keep in masks.items():
        watched[producers[layer]] = ~keep.numpy()
        for node in graph.node:
            if node.op_type == "BatchNormalization" and node.input[0] == producers[layer]:
                watched[node.output[0]] = ~keep.numpy()
    assert len(watched) == 4  # two convs, each with its BatchNorm
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in watched)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    for name, pruned in watched.items():
        assert np.all(values[name][:, pruned] == 0) and np.any(values[name][:, ~pruned] != 0), name


def test_the_factory_the_server_was_started_with_is_offered_and_loads(page, browser):
    page.get_by_text("Your code", exact=True).click()
    idle(page)
    load = page.get_by_role("button", name=f"Load {FACTORY}")
    load.click()
    page.locator('[data-testid="stAlertContentSuccess"]', has_text=f"Loaded {FACTORY}").wait_for()
    idle(page)
    assert page.locator('[data-testid="stSidebar"]').get_by_text(f"{FACTORY} · your code").is_visible()
    assert metric(page, "Prunable layers") == "3"
    assert page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count() == 0

    # Its link names no code, not even this server's own factory: opened fresh, it says what to choose.
    page.wait_for_url(lambda url: "model=factory" in url)
    assert "factory_models" not in page.url and "small_net" not in page.url
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    try:
        fresh = context.new_page()
        fresh.set_default_timeout(TIMEOUT_MS)
        fresh.goto(page.url)
        idle(fresh)
        notice = fresh.locator('[data-testid="stAlertContentWarning"]').inner_text()
        assert "made with a model built by the server's own code, which a link cannot carry" in notice
        assert fresh.locator('[data-testid="stSidebar"]').get_by_text("demo digits CNN · bundled weights").is_visible()
    finally:
        context.close()
