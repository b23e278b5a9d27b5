"""AppTest: the Heatmaps page shows the engine's distances, scores and masks, and reacts to its controls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fpgm_core
from dashboard import figures

HEATMAPS = "pages/heatmaps.py"


def charts(app) -> dict[str, dict]:
    """Plotly specs on the page, by widget key."""
    found = {}
    for element in app.get("plotly_chart"):
        spec = json.loads(element.proto.spec)
        found[element.key] = spec
    return found


def traces(spec: dict, kind: str) -> list[dict]:
    return [trace for trace in spec["data"] if trace["type"] == kind]


def decode(value):
    """A plotly array, typed (base64) or plain, as numpy."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            array = array.reshape([int(d) for d in str(shape).split(",")])
        return array
    return np.asarray(value)


def demo_model():
    return fpgm_core.build_model("demo", "default").model


def heat_parts(spec: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Displayed filter labels, the matrix, and the top pruned strip of a heatmap-mode figure."""
    heatmaps = traces(spec, "heatmap")
    main = next(trace for trace in heatmaps if "distance" in trace.get("hovertemplate", "") and trace.get("opacity", 1) != 0)
    strip = next(trace for trace in heatmaps if trace.get("y") == [""])
    return list(main["x"]), decode(main["z"]), decode(strip["z"]).reshape(-1)


def test_default_page_shows_the_first_layer_heatmap(new_app):
    app = new_app()
    specs = charts(app)
    assert {"heatmap", "scores", "projection_chart", "kernels"} <= specs.keys()
    meta = specs["heatmap"]["layout"]["meta"]
    assert meta == {"layer": "conv1", "metric": "l2", "mode": "heatmap"}
    labels, matrix, pruned = heat_parts(specs["heatmap"])
    weight = dict(demo_model().named_modules())["conv1"].weight
    scores = fpgm_core.fpgm_scores(weight, "l2", device="cpu")
    order = np.argsort(scores.numpy(), kind="stable")
    assert labels == [str(i) for i in order]
    expected = fpgm_core.distance_matrix(weight, "l2", device="cpu").numpy()[np.ix_(order, order)]
    np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-6)
    # 30% of 16 filters, the lowest-scored ones: first in score order.
    assert pruned.tolist() == [1] * 5 + [0] * 11
    main = next(t for t in traces(specs["heatmap"], "heatmap") if "distance" in t.get("hovertemplate", ""))
    assert "filter %{y} ↔ filter %{x}" in main["hovertemplate"] and "%{z" in main["hovertemplate"]
    assert not app.error


def test_order_toggle_shows_filters_by_index(new_app):
    app = new_app()
    app.radio(key="order").set_value("index").run()
    labels, _, pruned = heat_parts(charts(app)["heatmap"])
    assert labels == [str(i) for i in range(16)]
    weight = dict(demo_model().named_modules())["conv1"].weight
    keep = fpgm_core.fpgm_mask(weight, 0.3, "l2", device="cpu")
    assert pruned.tolist() == (~keep).int().tolist()


def test_slider_on_the_page_changes_the_marked_filters(new_app):
    app = new_app()
    app.slider(key="sparsity_pct").set_value(50).run()
    _, _, pruned = heat_parts(charts(app)["heatmap"])
    assert int(pruned.sum()) == 8
    scores = charts(app)["scores"]
    pruned_bars = next(trace for trace in traces(scores, "bar") if trace["name"] == "pruned")
    assert len(pruned_bars["x"]) == 8


@pytest.mark.parametrize("metric", ["l1", "cosine"])
def test_switching_metric_recomputes_distances_for_that_metric(new_app, metric):
    app = new_app()
    app.radio(key="metric").set_value(metric).run()
    spec = charts(app)["heatmap"]
    assert spec["layout"]["meta"]["metric"] == metric
    labels, matrix, _ = heat_parts(spec)
    weight = dict(demo_model().named_modules())["conv1"].weight
    order = [int(label) for label in labels]
    expected = fpgm_core.distance_matrix(weight, metric, device="cpu").numpy()[np.ix_(order, order)]
    np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-6)
    scores = fpgm_core.fpgm_scores(weight, metric, device="cpu").numpy()
    assert order == np.argsort(scores, kind="stable").tolist()


def test_other_layers_have_no_kernel_images_and_mds_marks_the_median(new_app):
    app = new_app()
    app.selectbox(key="heat_layer").set_value("layer2.conv1")
    app.radio(key="projection").set_value("MDS").run()
    specs = charts(app)
    assert "kernels" not in specs
    assert specs["heatmap"]["layout"]["meta"]["layer"] == "layer2.conv1"
    projection = specs["projection_chart"]
    star = next(trace for trace in projection["data"] if trace["name"] == "nearest the geometric median")
    weight = dict(demo_model().named_modules())["layer2.conv1"].weight
    median = int(torch.argmin(fpgm_core.fpgm_scores(weight, "l2", device="cpu")))
    assert f"filter {median}:" in star["hovertemplate"]
    points = sum(len(decode(trace["x"])) for trace in projection["data"] if trace["name"] in ("kept", "pruned"))
    assert points == 32


def test_large_layers_are_drawn_as_an_image_and_the_page_says_so(new_app, monkeypatch):
    monkeypatch.setattr(figures, "IMAGE_THRESHOLD", 8)
    app = new_app()
    spec = charts(app)["heatmap"]
    assert spec["layout"]["meta"]["mode"] == "image"
    image = traces(spec, "image")[0]
    assert image["source"].startswith("data:image/jpeg;base64,")
    hover = next(t for t in traces(spec, "heatmap") if t.get("opacity") == 0)
    assert "mean distance" in hover["hovertemplate"]
    captions = " ".join(caption.value for caption in app.caption)
    assert "drawn as one 16×16 image" in captions


def test_very_large_layers_are_drawn_by_blocks_from_the_pooled_view(new_app, monkeypatch):
    monkeypatch.setattr(figures, "IMAGE_THRESHOLD", 4)
    monkeypatch.setattr(figures, "POOL_THRESHOLD", 8)
    monkeypatch.setattr(figures, "POOLED_SIZE", 4)
    app = new_app()
    app.radio(key="projection").set_value("MDS").run()
    spec = charts(app)["heatmap"]
    image = traces(spec, "image")[0]
    assert (image["dx"], image["dy"], image["x0"]) == (4, 4, 1.5)  # 16 filters in 4 groups of 4
    strip = next(t for t in traces(spec, "heatmap") if t.get("y") == [""])
    assert len(decode(strip["z"]).reshape(-1)) == 16
    hover = next(t for t in traces(spec, "heatmap") if t.get("opacity") == 0)
    assert decode(hover["customdata"]).reshape(-1, 4)[-1].tolist() == [12, 15, 12, 15]
    captions = " ".join(caption.value for caption in app.caption)
    assert "groups of 4 consecutive filters" in captions and "pooled_distance_matrix" in captions
    assert "showing PCA for this layer" in captions


def test_output_layer_is_shown_unpruned_unless_included(new_app):
    app = new_app()
    app.selectbox(key="heat_layer").set_value("fc").run()
    _, _, pruned = heat_parts(charts(app)["heatmap"])
    assert pruned.sum() == 0
    app.switch_page("pages/sparsity.py").run()
    app.toggle(key="include_output").set_value(True).run()
    app.switch_page(HEATMAPS).run()
    assert app.session_state["heat_layer"] == "fc"
    _, _, pruned = heat_parts(charts(app)["heatmap"])
    assert pruned.sum() == 3  # round(0.3 · 10)


def test_moving_sliders_never_recomputes_distances(new_app, monkeypatch):
    app = new_app()
    app.switch_page("pages/sparsity.py").run()  # every layer scored once, then cached
    calls = {"scores": 0, "matrix": 0}
    real_scores, real_matrix = fpgm_core.plan.fpgm_scores, fpgm_core.distance_matrix

    def counted_scores(*args, **kwargs):
        calls["scores"] += 1
        return real_scores(*args, **kwargs)

    def counted_matrix(*args, **kwargs):
        calls["matrix"] += 1
        return real_matrix(*args, **kwargs)

    monkeypatch.setattr(fpgm_core.plan, "fpgm_scores", counted_scores)
    monkeypatch.setattr(fpgm_core, "distance_matrix", counted_matrix)
    for value in (10, 55, 80):
        app.slider(key="sparsity_pct").set_value(value).run()
    app.radio(key="mode").set_value("global").run()
    app.slider(key="sparsity_pct").set_value(40).run()
    app.switch_page(HEATMAPS).run()
    app.slider(key="sparsity_pct").set_value(20).run()
    assert not app.exception
    assert calls == {"scores": 0, "matrix": 0}
