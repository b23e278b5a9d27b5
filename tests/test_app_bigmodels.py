"""AppTest: big models through every page — torchvision's ViT-B/16, and a layer of 16384 filters.

Both run on random weights (nothing is downloaded). The ViT is chosen on the Model page as a user
would; the 16384-filter model is a custom architecture, uploaded as a state_dict.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

import fpgm_core
from dashboard import figures
from test_app_export import content, plan_of
from test_app_heatmaps import charts, decode, traces

MODEL_PAGE = "pages/model.py"
HEATMAPS = "pages/heatmaps.py"
SPARSITY = "pages/sparsity.py"
EXPORT = "pages/export.py"

# The 16384-filter layer's distances run in many small blocks: on a busy machine a second torch
# thread mostly waits (measured: the pooled view takes ~10× longer with two threads than with one).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def metric_values(app) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def captions(app) -> str:
    return " ".join(caption.value for caption in app.caption)


def assert_clean(app) -> None:
    assert not app.exception, app.exception
    assert not app.error, [error.value for error in app.error]


def assert_masked_checkpoint(state: dict, original: nn.Module, masks: dict) -> None:
    """``state`` equals ``original``'s weights except exactly zero at the filters ``masks`` prune.

    For models without BatchNorm (a BatchNorm after a pruned filter is zeroed too).
    """
    reference = original.state_dict()
    assert state.keys() == reference.keys()
    masked = {f"{layer}.{kind}" for layer in masks for kind in ("weight", "bias")}
    for name, tensor in reference.items():
        if name not in masked:
            assert torch.equal(state[name], tensor), name
    for layer, keep in masks.items():
        for kind in ("weight", "bias"):
            if f"{layer}.{kind}" not in state:
                continue
            got, was = state[f"{layer}.{kind}"], reference[f"{layer}.{kind}"]
            assert bool((got[~keep] == 0).all()), f"{layer}.{kind}: a pruned filter is not zero"
            assert torch.equal(got[keep], was[keep]), f"{layer}.{kind}: a kept filter changed"


# --- ViT-B/16 ----------------------------------------------------------------------------------

VIT_MLP = "encoder.layers.encoder_layer_0.mlp.0"  # Linear 768 → 3072
VIT_ATTENTION = "encoder.layers.encoder_layer_11.self_attention.out_proj"  # Linear 768 → 768


def test_vit_b_16_through_every_page(new_app, downloads, tmp_path):
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("torchvision").run()
    app.selectbox(key="tv_arch").set_value("vit_b_16")
    app.radio(key="tv_weights").set_value("none").run()
    next(button for button in app.button if button.label == "Load vit_b_16").click().run()
    assert_clean(app)
    assert app.session_state["workspace"].source.arch == "vit_b_16"
    original = fpgm_core.build_model("vit_b_16", "none").model
    layers = fpgm_core.prunable_layers(original)
    assert metric_values(app)["Prunable layers"] == str(len(layers))

    app.switch_page(HEATMAPS).run()
    assert_clean(app)
    for name, filters in ((VIT_MLP, 3072), (VIT_ATTENTION, 768)):
        app.selectbox(key="heat_layer").set_value(name).run()
        assert_clean(app)
        spec = charts(app)["heatmap"]
        # Above IMAGE_THRESHOLD, at most POOL_THRESHOLD: the whole matrix as one image.
        assert spec["layout"]["meta"] == {"layer": name, "metric": "l2", "mode": "image"}
        assert f"drawn as one {filters}×{filters} image" in captions(app)
        strip = next(t for t in traces(spec, "heatmap") if t.get("y") == [""])
        assert int(decode(strip["z"]).sum()) == round(0.3 * filters)
    # The hover layer's block means are the engine's distances, in score order.
    app.selectbox(key="heat_layer").set_value(VIT_MLP).run()
    spec = charts(app)["heatmap"]
    hover = next(t for t in traces(spec, "heatmap") if t.get("opacity") == 0)
    spans = decode(hover["customdata"]).reshape(-1, 4)
    weight = dict(original.named_modules())[VIT_MLP].weight
    order = np.argsort(fpgm_core.fpgm_scores(weight, "l2", device="cpu").numpy(), kind="stable")
    full = fpgm_core.distance_matrix(weight, "l2", device="cpu").numpy()[np.ix_(order, order)]
    last = spans[-1]  # rows c2..c3 × columns c0..c1 of the bottom-right block
    block = full[last[2] : last[3] + 1, last[0] : last[1] + 1]
    np.testing.assert_allclose(decode(hover["z"]).reshape(-1)[-1], block.mean(), rtol=1e-4)

    app.switch_page(SPARSITY).run()
    app.slider(key="sparsity_pct").set_value(40).run()
    assert_clean(app)
    plan = plan_of(app)
    counts = fpgm_core.plan_counts(layers, plan)
    total = sum(layer.filters for layer in layers)
    assert metric_values(app)["Filters pruned"] == f"{sum(counts.values()):,} of {total:,}"

    app.switch_page(EXPORT).run()
    assert_clean(app)
    stem = "vit_b_16-fpgm"
    assert {f"{stem}.safetensors", f"{stem}.pt", f"{stem}.masks.safetensors", f"{stem}.recipe.json"} <= set(downloads)
    masks = load_safetensors(content(downloads, f"{stem}.masks.safetensors"))
    assert {name: int((~keep).sum()) for name, keep in masks.items() if not keep.all()} == {
        name: count for name, count in counts.items() if count
    }
    # FPGM drops a layer's lowest-scored filters: checked on one layer against the engine.
    assert torch.equal(masks[VIT_MLP], fpgm_core.fpgm_mask(weight, 0.4, "l2", device="cpu"))
    state = load_safetensors(content(downloads, f"{stem}.safetensors"))
    unmodified = torchvision.models.get_model("vit_b_16", weights=None)
    unmodified.load_state_dict(state, strict=True)
    assert_masked_checkpoint(unmodified.state_dict(), original, masks)
    recipe = json.loads(content(downloads, f"{stem}.recipe.json"))
    assert recipe["model"]["arch"] == "vit_b_16" and recipe["layers"][VIT_MLP]["pruned"] == counts[VIT_MLP]


# --- A layer of 16384 filters -------------------------------------------------------------------

WIDE = 16384


class Wide(nn.Module):
    """A small CNN whose 1×1 convolution ``expand`` has 16384 filters, read by the classifier ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, WIDE, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDE, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.expand(torch.relu(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture
def wide_architecture(monkeypatch):
    """Offer ``wide`` next to torchvision's architectures on the Model page.

    The dashboard loads uploaded weights only into the demo or a torchvision architecture, none of
    which has more than 6144 filters in a layer; this registers a custom one with the builder the
    dashboard calls, so the rest (upload, pages, exports) runs unchanged.
    """
    import dashboard.sources
    import dashboard.uploads

    real_build, real_archs = fpgm_core.build_model, fpgm_core.classification_architectures

    def build(arch, weights="none", **kwargs):
        if arch != "wide":
            return real_build(arch, weights, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fpgm_core.LoadedModel(Wide().eval(), "wide", "none", (1, 3, 8, 8))

    monkeypatch.setattr(fpgm_core, "classification_architectures", lambda: [*real_archs(), "wide"])
    monkeypatch.setattr(dashboard.sources, "build_model", build)
    monkeypatch.setattr(dashboard.uploads, "build_model", build)


@pytest.fixture
def no_full_matrix(monkeypatch):
    """Fail (and record) any full N×N distance matrix asked for a layer above POOL_THRESHOLD filters."""
    real = fpgm_core.distance_matrix
    asked: list[int] = []

    def guarded(weight, *args, **kwargs):
        asked.append(weight.shape[0])
        if weight.shape[0] > figures.POOL_THRESHOLD:
            raise AssertionError(f"the full {weight.shape[0]}² distance matrix was formed")
        return real(weight, *args, **kwargs)

    monkeypatch.setattr(fpgm_core, "distance_matrix", guarded)  # dashboard.cache calls it through fpgm_core
    return asked


def test_a_16384_filter_layer_is_shown_reduced_and_exports(new_app, downloads, wide_architecture, no_full_matrix):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # not the builder's seed: the upload's weights must be the ones used
        uploaded = Wide().eval()
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("upload").run()
    app.file_uploader(key="upload_file").upload("wide.safetensors", save_safetensors(uploaded.state_dict()))
    app.selectbox(key="upload_arch").set_value("wide").run()
    next(button for button in app.button if button.label == "Load the uploaded weights").click().run()
    assert_clean(app)
    assert app.session_state["workspace"].source.arch == "wide"
    assert list(app.dataframe[0].value["filters"]) == [8, WIDE, 10]

    app.switch_page(HEATMAPS).run()
    app.selectbox(key="heat_layer").set_value("expand")
    app.radio(key="projection").set_value("MDS").run()  # MDS needs the N² matrix: PCA instead
    assert_clean(app)
    spec = charts(app)["heatmap"]
    assert spec["layout"]["meta"] == {"layer": "expand", "metric": "l2", "mode": "image"}
    image = traces(spec, "image")[0]
    group = -(-WIDE // figures.POOLED_SIZE)
    assert (image["dx"], image["dy"]) == (group, group)
    strip = next(t for t in traces(spec, "heatmap") if t.get("y") == [""])
    assert int(decode(strip["z"]).sum()) == round(0.3 * WIDE)  # every filter still marked, not every group
    text = captions(app)
    pixels = WIDE // group
    assert f"**Reduced view** of {WIDE} filters" in text, text
    assert f"{pixels}×{pixels}" in text and f"groups of {group} consecutive filters" in text, text
    assert "showing PCA for this layer" in text
    assert 8 in no_full_matrix  # the guard sees the page's calls: the 8-filter stem's heatmap went through it
    assert WIDE not in no_full_matrix

    app.switch_page(SPARSITY).run()
    assert_clean(app)
    plan = plan_of(app)
    layers = fpgm_core.prunable_layers(uploaded)
    counts = fpgm_core.plan_counts(layers, plan)
    assert counts["expand"] == round(0.3 * WIDE)
    assert metric_values(app)["Filters pruned"] == f"{sum(counts.values()):,} of {WIDE + 18:,}"

    app.switch_page(EXPORT).run()
    assert_clean(app)
    masks = load_safetensors(content(downloads, "wide-fpgm.masks.safetensors"))
    assert int((~masks["expand"]).sum()) == counts["expand"]
    state = load_safetensors(content(downloads, "wide-fpgm.safetensors"))
    unmodified = Wide()
    unmodified.load_state_dict(state, strict=True)
    assert_masked_checkpoint(unmodified.state_dict(), uploaded, masks)
    assert WIDE not in no_full_matrix


# --- The explainer's size guards ----------------------------------------------------------------

EXPLAINER = "pages/explainer.py"


@pytest.fixture
def no_big_svd(monkeypatch):
    """Fail any full SVD of more than 4 M values: the exact view's cost (vgg16's 4096×25088 layer
    would take minutes and gigabytes in float64)."""
    real = torch.linalg.svd

    def guarded(matrix, *args, **kwargs):
        if matrix.numel() > 1 << 22:
            raise AssertionError(f"a full SVD of a {tuple(matrix.shape)} matrix")
        return real(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", guarded)


def load_torchvision(app, arch: str) -> None:
    app.switch_page(MODEL_PAGE).run()
    app.radio(key="source_kind").set_value("torchvision").run()
    app.selectbox(key="tv_arch").set_value(arch)
    app.radio(key="tv_weights").set_value("none").run()
    next(button for button in app.button if button.label == f"Load {arch}").click().run()
    assert_clean(app)


def explainer_charts(app) -> set[str]:
    return {element.key for element in app.get("plotly_chart")}


def test_the_explainer_guards_big_layers_of_vit_and_vgg(new_app, no_big_svd):
    app = new_app(MODEL_PAGE)
    load_torchvision(app, "vit_b_16")
    app.switch_page(EXPLAINER).run()
    app.selectbox(key="explain_layer").set_value(VIT_MLP).run()  # 3072×768: exact
    assert_clean(app)
    assert {"explain_projection", "explain_scores"} <= explainer_charts(app)
    assert "approximate" not in captions(app)

    load_torchvision(app, "vgg16_bn")
    app.switch_page(EXPLAINER).run()
    app.selectbox(key="explain_layer").set_value("classifier.0").run()  # 4096×25088: refused
    assert_clean(app)
    assert "too many to draw its geometric median here" in " ".join(info.value for info in app.info)
    assert "explain_projection" not in explainer_charts(app)
    app.selectbox(key="explain_layer").set_value("classifier.3").run()  # 4096×4096: approximate
    assert_clean(app)
    assert {"explain_projection", "explain_scores"} <= explainer_charts(app)
    assert "approximate" in captions(app)
    # The approximate median is still near the true one: the FPGM scores track the distances to it.
    text = " ".join(m.value for m in app.markdown)
    correlation = float(text.split("geometric median: **")[1].split("**")[0])
    assert correlation > 0.5, text
