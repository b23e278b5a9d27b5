"""Shareable links (``dashboard/links.py``): a view → its URL's parameters → the same view, and every
bad or stale value falls back to its default with a notice naming it, never an exception.

The functions are called on plain dicts of session values, as ``init_state`` and ``app.py`` call
them; the last tests run the whole entry script (AppTest) with a link's query string. The browser
tests in ``test_e2e_links.py`` open real links in Chromium.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

import factory_models
from dashboard import links
from dashboard.sources import DEFAULT_SOURCE, FACTORIES_ENV, ModelSource
from dashboard.state import DEFAULTS, WORKSPACE, Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMM_SMALL = "timm:resnet10t"  # one of timm's smallest convolutional nets (5 M parameters)


def new_session(source: ModelSource = DEFAULT_SOURCE) -> dict[str, Any]:
    """A new session's values, as ``init_state`` gives them before reading its URL."""
    return {**DEFAULTS, "flash": None, "source_kind": source.kind, WORKSPACE: Workspace(source)}


def opened(query: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """A new session's values after opening ``query``, and the notice it shows (or None)."""
    session = new_session()
    values = dict(links.opened_view(session, query))
    notice = values.pop(links.NOTICE, None)
    session.update(values)
    assert notice is None or notice[1] is None  # shown on the first page drawn, not yet
    return session, None if notice is None else notice[0]


def view(session: dict[str, Any]) -> dict[str, Any]:
    """What a user sees of a session's view (the URL's parameters aside)."""
    current: Workspace = session[WORKSPACE]
    keys = ("heat_layer", "metric", "order", "projection", "sparsity_pct", "mode", "max_layer_pct", "include_output")
    return {"source": current.source, "overrides": current.overrides, **{key: session[key] for key in keys}}


@pytest.mark.parametrize(
    ("source", "layer", "overrides"),
    [
        (DEFAULT_SOURCE, "layer1.conv2", {"conv1": 0.25, "layer2.conv1": 0.5}),
        (ModelSource("demo", "demo", "none"), "conv1", {}),
        (ModelSource("torchvision", "resnet18", "none"), "layer2.0.downsample.0", {"layer1.0.conv1": 0.125, "fc": 0.0}),
        (ModelSource("timm", TIMM_SMALL, "none"), "conv1.3", {"layer1.0.conv2": 0.75}),
    ],
    ids=["demo", "demo-random", "torchvision", "timm"],
)
def test_a_view_comes_back_whole_from_its_link(source, layer, overrides):
    session = new_session(source)
    session[WORKSPACE] = session[WORKSPACE].with_overrides(overrides)
    session.update(heat_layer=layer, metric="cosine", order="index", projection="MDS", sparsity_pct=45, mode="global",
                   max_layer_pct=60, include_output=True)
    params = links.view_params(session)
    assert list(params) == [name for name in links.PARAMS if name in params]  # the URL's order
    assert params["model"] == source.arch and params["sparsity"] == "45" and params["cap"] == "60"

    reopened, notice = opened(params)
    assert notice is None
    assert view(reopened) == view(session)
    assert links.view_params(reopened) == params
    assert reopened["source_kind"] == source.kind
    if source.kind == "torchvision":
        assert (reopened["tv_arch"], reopened["tv_weights"]) == ("resnet18", "none")  # the Model page's widgets
    if source.kind == "timm":
        assert (reopened["timm_arch"], reopened["timm_weights"]) == ("resnet10t", "none")


def test_a_link_without_a_value_keeps_that_default_and_uniform_mode_carries_no_cap():
    session = new_session()
    params = links.view_params(session)
    assert params == {"model": "demo", "weights": "default", "metric": "l2", "order": "score", "projection": "PCA",
                      "sparsity": "30", "mode": "uniform"}
    reopened, notice = opened({"sparsity": "12"})
    assert notice is None
    assert view(reopened) == {**view(new_session()), "sparsity_pct": 12}


BAD_VALUES = [
    # (query, the session value it would have set, the text the notice must contain)
    ({"model": "resnet999"}, "source", "model='resnet999'"),
    ({"model": "timm:no_such_net"}, "source", "model='timm:no_such_net'"),
    ({"model": ""}, "source", "model=''"),
    ({"model": "resnet18", "weights": "imagenet"}, "source", "weights='imagenet'"),
    ({"weights": "v2"}, "source", "weights='v2'"),
    ({"layer": "fc99"}, "heat_layer", "layer='fc99'"),
    ({"layer": "layer1.0.conv1"}, "heat_layer", "layer='layer1.0.conv1'"),  # resnet18's, not the demo's
    ({"metric": "l3"}, "metric", "metric='l3'"),
    ({"order": "random"}, "order", "order='random'"),
    ({"projection": "t-SNE"}, "projection", "projection='t-SNE'"),
    ({"mode": "both"}, "mode", "mode='both'"),
    ({"sparsity": "96"}, "sparsity_pct", "sparsity='96'"),
    ({"sparsity": "-1"}, "sparsity_pct", "sparsity='-1'"),
    ({"sparsity": "forty"}, "sparsity_pct", "sparsity='forty'"),
    ({"sparsity": "40.5"}, "sparsity_pct", "sparsity='40.5'"),
    ({"sparsity": ""}, "sparsity_pct", "sparsity=''"),
    ({"sparsity": "٤٠"}, "sparsity_pct", "sparsity='٤٠'"),  # Arabic-Indic digits: str.isdigit() says yes
    ({"cap": "4"}, "max_layer_pct", "cap='4'"),
    ({"cap": "101"}, "max_layer_pct", "cap='101'"),
    ({"cap": "1e2"}, "max_layer_pct", "cap='1e2'"),
    ({"output": "yes"}, "include_output", "output='yes'"),
    ({"overrides": "conv1:2"}, "overrides", "override 'conv1:2'"),
    ({"overrides": "conv1:-0.1"}, "overrides", "override 'conv1:-0.1'"),
    ({"overrides": "conv1:nan"}, "overrides", "override 'conv1:nan'"),
    ({"overrides": "conv1:half"}, "overrides", "override 'conv1:half'"),
    ({"overrides": "conv1"}, "overrides", "override 'conv1'"),
    ({"overrides": "fc99:0.5"}, "overrides", "override 'fc99:0.5'"),
    ({"sparcity": "40"}, None, "parameter 'sparcity'"),
]


@pytest.mark.parametrize(("query", "key", "named"), BAD_VALUES, ids=[repr(case[0]) for case in BAD_VALUES])
def test_a_bad_or_stale_value_falls_back_to_its_default_with_a_notice_naming_it(query, key, named):
    session, notice = opened(query)
    assert view(session) == view(new_session())  # everything at its default, the value asked for included
    assert notice is not None and named in notice, notice
    assert notice.endswith("Those parts of the view start from their defaults.")


def test_a_link_with_good_and_bad_values_keeps_the_good_ones_and_names_every_bad_one():
    session, notice = opened({"model": "demo", "layer": "layer2.conv1", "metric": "L2", "sparsity": "55", "mode": "global",
                              "cap": "500", "overrides": "conv1:0.5,nowhere:0.5,layer1.conv1:7"})
    assert view(session) == {**view(new_session()), "heat_layer": "layer2.conv1", "sparsity_pct": 55, "mode": "global",
                             "overrides": {"conv1": 0.5}}
    for named in ("metric='L2'", "cap='500'", "override 'nowhere:0.5'", "override 'layer1.conv1:7'"):
        assert named in notice
    assert "layer2.conv1" not in notice and "55" not in notice


@pytest.mark.parametrize(
    ("source", "what"),
    [
        (ModelSource("onnx", "small.onnx", "default", "ab" * 32, "onnx"), "an uploaded ONNX model"),
        (ModelSource("upload", "resnet18", "tuned.safetensors", "cd" * 32, "state_dict"), "uploaded weights"),
        (ModelSource("factory", "factory_models:small_net", "default"), "a model built by the server's own code"),
    ],
    ids=["onnx", "weights-upload", "factory"],
)
def test_an_upload_or_a_factory_stays_behind_and_the_link_carries_the_rest_of_the_view(source, what):
    session = new_session(source)
    session[WORKSPACE] = session[WORKSPACE].with_overrides({"features.0": 0.5})
    session.update(heat_layer="features.0", metric="l1", sparsity_pct=60, mode="global", max_layer_pct=70)
    params = links.view_params(session)
    # Neither the file's name nor the factory's (code) is in the URL, nor the model's layers.
    assert params == {"model": source.kind, "metric": "l1", "order": "score", "projection": "PCA", "sparsity": "60",
                      "mode": "global", "cap": "70"}
    assert links.not_carried(source) == f"Its link carries the view but not {what}."

    reopened, notice = opened({**params, "layer": "features.0"})
    assert view(reopened) == {**view(new_session()), "metric": "l1", "sparsity_pct": 60, "mode": "global", "max_layer_pct": 70}
    assert notice.startswith(f"This link was made with {what}, which a link cannot carry")
    assert DEFAULT_SOURCE.label() in notice and "(the layer it names belonged to that model)" in notice
    assert "Those parts" not in notice  # nothing else was wrong with it
    assert links.not_carried(DEFAULT_SOURCE) is None


def test_a_link_never_names_code_to_run_not_even_a_factory_the_server_was_started_with(monkeypatch, tmp_path):
    monkeypatch.setenv(FACTORIES_ENV, "factory_models:small_net")
    probe = tmp_path / "link_probe_module.py"
    probe.write_text("raise SystemExit('imported by a link')\n\ndef make():\n    raise SystemExit('run by a link')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = len(factory_models.CALLS)
    for arch in ("factory_models:small_net", "link_probe_module:make", "timm:link_probe_module:make", "os:system",
                 "torchvision.models:resnet18"):
        session, notice = opened({"model": arch, "layer": "features.0"})
        assert session[WORKSPACE].source == DEFAULT_SOURCE, arch
        assert f"model={arch!r}" in notice, notice
    assert len(factory_models.CALLS) == calls
    assert "link_probe_module" not in sys.modules


def test_the_entry_script_opens_a_link_and_keeps_its_url_a_link_to_the_view():
    """AppTest of ``app.py`` with a link's query string: the page draws the view, the URL keeps it.

    (Only AppTest's first run goes through ``app.py``; later runs run the page alone, so what
    happens after opening — a refresh, other pages, the notice going — is in test_e2e_links.py.)
    """
    from streamlit.testing.v1 import AppTest

    from load_sessions import APP

    app = AppTest.from_file(str(APP), default_timeout=120)
    app.query_params.update(model="demo", weights="default", layer="layer1.conv1", metric="l1", order="index",
                            sparsity="40", mode="uniform")
    app.run()
    assert not app.exception, app.exception
    assert app.selectbox(key="heat_layer").value == "layer1.conv1"
    assert app.radio(key="metric").value == "l1" and app.radio(key="order").value == "index"
    assert app.slider(key="sparsity_pct").value == 40
    assert any(caption.value.startswith("Plan: 40% · per layer (uniform) · L1") for caption in app.sidebar.caption)
    assert not app.warning
    assert app.query_params == {"model": "demo", "weights": "default", "layer": "layer1.conv1", "metric": "l1",
                                "order": "index", "projection": "PCA", "sparsity": "40", "mode": "uniform"}


def test_the_entry_script_shows_a_bad_links_notice_and_the_defaults():
    from streamlit.testing.v1 import AppTest

    from load_sessions import APP

    app = AppTest.from_file(str(APP), default_timeout=120)
    app.query_params.update(sparsity="abc", metric="l9")
    app.run()
    assert not app.exception, app.exception
    assert [warning.value for warning in app.warning] == [
        "This link's metric='l9' is not one of l1, l2, cosine; sparsity='abc' is not a whole percentage from 0 to 95. "
        "Those parts of the view start from their defaults."
    ]
    assert app.slider(key="sparsity_pct").value == 30 and app.radio(key="metric").value == "l2"
    assert app.query_params["sparsity"] == "30" and app.query_params["metric"] == "l2"  # the URL says what is shown
