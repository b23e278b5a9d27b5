"""AppTest: the Model page loads the default model, torchvision architectures, and reports weights problems."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import pytest
import torch

import fpgm_core
from dashboard import pretrained
from dashboard.sources import DEFAULT_SOURCE, ModelSource, default_source
from dashboard.state import Workspace

MODEL_PAGE = "pages/model.py"


def metric_values(app) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def test_default_model_loads_with_its_summary(new_app):
    app = new_app(MODEL_PAGE)
    assert app.session_state["workspace"].source == default_source()
    metrics = metric_values(app)
    model = fpgm_core.build_model(DEFAULT_SOURCE.arch, DEFAULT_SOURCE.weights).model
    layers = fpgm_core.prunable_layers(model)
    assert metrics["Prunable layers"] == str(len(layers))
    assert metrics["Filters"] == f"{sum(layer.filters for layer in layers):,}"
    assert metrics["Parameters"].endswith("k") or metrics["Parameters"].endswith("M")
    assert "FLOPs / forward" in metrics
    assert any("Input `1×1×8×8`" in caption.value for caption in app.caption)
    table = app.dataframe[0].value
    assert list(table["layer"]) == [layer.name for layer in layers]
    assert list(table["filters"]) == [layer.filters for layer in layers]
    assert not app.error


def test_every_page_renders_the_default_model(new_app):
    app = new_app()
    for page in (MODEL_PAGE, "pages/heatmaps.py", "pages/sparsity.py", "pages/export.py"):
        app.switch_page(page).run()
        assert not app.exception, (page, app.exception)
        assert not app.error, (page, [e.value for e in app.error])


def test_torchvision_architecture_with_random_weights(new_app):
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("torchvision").run()
    app.selectbox(key="tv_arch").set_value("resnet18")
    app.radio(key="tv_weights").set_value("none").run()
    app.button[0].click().run()
    assert not app.exception, app.exception
    assert app.session_state["workspace"].source == ModelSource("torchvision", "resnet18", "none")
    assert app.success[0].value.startswith("Loaded resnet18")
    assert metric_values(app)["Prunable layers"] == "21"
    assert [header.value for header in app.subheader][-1] == "resnet18 · random init"


def test_pretrained_download_failure_falls_back_to_random_with_a_notice(new_app, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: resnet18 is not there

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", offline)
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("torchvision").run()
    app.selectbox(key="tv_arch").set_value("resnet18")
    app.radio(key="tv_weights").set_value("default").run()
    assert any("will be downloaded" in caption.value for caption in app.caption)
    app.button[0].click().run()
    assert not app.exception, app.exception
    assert app.session_state["workspace"].source == ModelSource("torchvision", "resnet18", "none")
    notices = " ".join(warning.value for warning in app.warning)
    assert "could not download pretrained weights for resnet18" in notices
    assert "random initialisation" in notices


def test_download_pretrained_streams_with_progress_and_checks_the_hash(monkeypatch, tmp_path):
    state = io.BytesIO()
    torch.save({"w": torch.ones(3)}, state)
    payload = state.getvalue()
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(pretrained, "pretrained_url", lambda arch: f"https://example.invalid/{arch}-{prefix}.pth")
    monkeypatch.setattr(pretrained, "_CHUNK", 100)

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", lambda url, timeout: Response(payload))
    seen = []
    path = pretrained.download_pretrained("tiny", lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "hub" / "checkpoints" / f"tiny-{prefix}.pth"
    assert path.read_bytes() == payload
    assert seen[-1] == (len(payload), len(payload)) and len(seen) > 1
    assert pretrained.pretrained_available("tiny")
    # A corrupt download (hash prefix does not match) leaves nothing behind.
    monkeypatch.setattr(pretrained, "pretrained_url", lambda arch: "https://example.invalid/other-00000000.pth")
    with pytest.raises(fpgm_core.ModelLoadError, match="corrupt"):
        pretrained.download_pretrained("other")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_sessions_do_not_share_state(new_app):
    first = new_app("pages/sparsity.py")
    second = new_app("pages/sparsity.py")
    first.slider(key="sparsity_pct").set_value(70).run()
    second.run()
    assert first.session_state["sparsity_pct"] == 70
    assert second.session_state["sparsity_pct"] == 30
    assert metric_values(first)["Filters pruned"] != metric_values(second)["Filters pruned"]


def test_a_model_that_cannot_be_rebuilt_shows_an_error_not_a_traceback(new_app):
    app = new_app()
    # An upload whose weights are no longer in this session.
    app.session_state["workspace"] = Workspace(ModelSource("upload", "demo", "gone.pt", "0" * 64, "state_dict"))
    for page in ("pages/heatmaps.py", MODEL_PAGE, "pages/sparsity.py", "pages/export.py"):
        app.switch_page(page).run()
        assert not app.exception, page
        assert "upload the file again" in app.error[0].value
