"""AppTest: the Model page's sources — timm, an uploaded ONNX graph, your own factories — through to the Export page."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

import factory_models
import fpgm_core
from dashboard.sources import FACTORIES_ENV, ModelSource
from dashboard.state import Workspace
from test_app_export import content

MODEL_PAGE, EXPORT = "pages/model.py", "pages/export.py"
TIMM_NAME = "mobilenetv3_small_050"
ROOT = Path(__file__).resolve().parents[1]


def export_onnx(model: nn.Module, shape, **options) -> bytes:
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(shape),), buffer, **options)
    return buffer.getvalue()


def press(app, label_start: str):
    next(button for button in app.button if button.label.startswith(label_start)).click().run()
    assert not app.exception, app.exception
    return app


def upload_onnx(app, name: str, data: bytes):
    app.radio(key="source_kind").set_value("upload").run()
    app.file_uploader(key="upload_file").upload(name, data).run()
    assert not any(s.label.startswith("Architecture") for s in app.selectbox)  # an ONNX file needs none
    return press(app, "Load the ONNX model")


def errors(app) -> list[str]:
    return [error.value for error in app.error]


# --- timm --------------------------------------------------------------------------------------


def test_timm_architecture_random_init_through_every_page(new_app):
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("timm").run()
    box = app.selectbox(key="timm_arch")
    assert len(box.options) > 1000 and "resnet50" in box.options and box.value == "resnet50"
    box.set_value(TIMM_NAME)
    app.radio(key="timm_weights").set_value("none").run()
    press(app, f"Load timm:{TIMM_NAME}")
    assert app.session_state["workspace"].source == ModelSource("timm", f"timm:{TIMM_NAME}", "none")
    expected = fpgm_core.prunable_layers(fpgm_core.build_model(f"timm:{TIMM_NAME}", "none").model)
    assert {m.label: m.value for m in app.metric}["Prunable layers"] == str(len(expected))
    for page in ("pages/heatmaps.py", "pages/sparsity.py", EXPORT):
        app.switch_page(page).run()
        assert not app.exception and not errors(app), (page, errors(app))
    assert "timm.create_model" in app.code[0].value


def test_timm_pretrained_unreachable_falls_back_to_random_with_the_reason(new_app, tmp_path, monkeypatch):
    import socket

    from huggingface_hub import constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("timm").run()
    app.selectbox(key="timm_arch").set_value(TIMM_NAME).run()
    assert any("will be downloaded" in c.value for c in app.caption)
    press(app, f"Load timm:{TIMM_NAME}")
    assert app.session_state["workspace"].source == ModelSource("timm", f"timm:{TIMM_NAME}", "none")
    warnings_shown = " ".join(w.value for w in app.warning)
    assert "cannot be reached" in warnings_shown and "random initialisation" in warnings_shown


def test_timm_pretrained_from_the_cache(new_app, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from fpgm_core.models.timm import timm_pretrained_cfg

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    state = fpgm_core.build_model(f"timm:{TIMM_NAME}", "none").model.state_dict()
    weights = {k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}
    data = save_safetensors(weights)
    commit = hashlib.sha1(data).hexdigest()
    folder = tmp_path / "hub" / f"models--{timm_pretrained_cfg(TIMM_NAME)['hf_hub_id'].replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit / "model.safetensors").write_bytes(data)
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("timm").run()
    app.selectbox(key="timm_arch").set_value(TIMM_NAME).run()
    assert any("In the local Hugging Face cache." in c.value for c in app.caption)
    press(app, f"Load timm:{TIMM_NAME}")
    assert app.session_state["workspace"].source == ModelSource("timm", f"timm:{TIMM_NAME}", "default")
    from dashboard import cache

    loaded = cache.load_model(app.session_state["workspace"].source, "cpu")
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in weights.items())


# --- ONNX ----------------------------------------------------------------------------------------


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    model = factory_models.SmallNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2)
                module.weight.normal_(1, 0.5)
                module.bias.normal_()
    return model.eval()


def _zeros_in_onnxruntime(graph: bytes, masks: dict[str, torch.Tensor], layer_outputs: dict[str, str]) -> None:
    model = onnx.load_model_from_string(graph)
    watched = {}
    for layer, keep in masks.items():
        watched[layer_outputs[layer]] = ~keep.numpy()
        for node in model.graph.node:
            if node.op_type == "BatchNormalization" and node.input[0] == layer_outputs[layer]:
                watched[node.output[0]] = ~keep.numpy()
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in watched)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    for name, pruned in watched.items():
        channels = np.moveaxis(values[name], -1 if values[name].ndim == 2 else 1, 0)
        assert pruned.any() and np.all(channels[pruned] == 0), name


def test_onnx_upload_converts_and_exports_its_masked_graph(new_app, downloads, tmp_path):
    data = export_onnx(_small_net(), (1, 3, 16, 16), dynamo=False, do_constant_folding=False)
    app = upload_onnx(new_app(MODEL_PAGE), "small.onnx", data)
    source = app.session_state["workspace"].source
    assert (source.kind, source.arch, source.digest) == ("onnx", "small.onnx", hashlib.sha256(data).hexdigest())
    assert any("converted to PyTorch by onnx2torch" in info.value for info in app.info)
    assert not app.warning and not errors(app)
    assert {m.label: m.value for m in app.metric}["Prunable layers"] == "3"
    app.switch_page("pages/sparsity.py").run()
    app.slider(key="sparsity_pct").set_value(50).run()
    app.switch_page(EXPORT).run()
    assert not app.exception and not errors(app)
    labels = [button.label for button in app.download_button]
    assert labels[:2] == ["small-fpgm.onnx", "small-fpgm.masks.safetensors"] and "small-fpgm.safetensors" not in labels
    assert any(button.label == "Slim the model" for button in app.button)  # converted: slimming is offered
    graph = content(downloads, "small-fpgm.onnx")
    masks = load_safetensors(content(downloads, "small-fpgm.masks.safetensors"))
    from dashboard import cache

    loaded = cache.load_model(source, "cpu", data)
    assert sorted(masks) == ["features/features/0/Conv", "features/features/3/Conv"]
    _zeros_in_onnxruntime(graph, masks, loaded.onnx.layer_outputs)
    # The page's command, run headlessly beside the uploaded file, writes the same graph.
    (tmp_path / "small.onnx").write_bytes(data)
    (tmp_path / "small-fpgm.recipe.json").write_bytes(content(downloads, "small-fpgm.recipe.json"))
    command = shlex.split(app.code[-1].value)
    assert command[:6] == ["python", "-m", "fpgm_core", "prune", "--arch", "small.onnx"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (tmp_path / "cli").mkdir()
    done = subprocess.run([sys.executable, *command[1:-1], str(tmp_path / "cli" / "small-fpgm.onnx")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli" / "small-fpgm.onnx").read_bytes() == graph
    # The Evaluate page can use the converted model (ImageNet preprocessing at its input size).
    app.switch_page("pages/evaluate.py").run()
    assert not app.exception and not errors(app)


def test_an_onnx_graph_that_does_not_convert_names_the_op_and_keeps_the_masked_export(new_app, downloads):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 3))
    data = export_onnx(net, (1, 3, 16, 16), dynamo=True, optimize=False)
    app = upload_onnx(new_app(MODEL_PAGE), "gelu.onnx", data)
    assert app.session_state["workspace"].source.kind == "onnx" and not errors(app)
    assert any("no converter for Gelu (opset 20)" in w.value for w in app.warning)
    app.switch_page("pages/heatmaps.py").run()
    assert not app.exception and not errors(app)
    app.switch_page(EXPORT).run()
    assert not app.exception and not errors(app)
    assert any("Slimming needs the graph in PyTorch" in info.value and "Gelu" in info.value for info in app.info)
    assert not any(button.label == "Slim the model" for button in app.button)
    # Fine-tuning needs gradients through PyTorch layers, which the onnxruntime view has not.
    app.switch_page("pages/finetune.py").run()
    assert not app.exception and not errors(app)
    assert any("Fine-tuning needs the graph in PyTorch" in w.value and "Gelu" in w.value for w in app.warning)
    assert not any(button.label == "Start fine-tuning" for button in app.button)
    from dashboard import cache

    loaded = cache.load_model(app.session_state["workspace"].source, "cpu", data)
    masks = load_safetensors(content(downloads, "gelu-fpgm.masks.safetensors"))
    _zeros_in_onnxruntime(content(downloads, "gelu-fpgm.onnx"), masks, loaded.onnx.layer_outputs)


def test_a_folded_onnx_graph_is_flagged_on_the_model_and_export_pages(new_app):
    data = export_onnx(_small_net(), (1, 3, 16, 16), dynamo=False)
    app = upload_onnx(new_app(MODEL_PAGE), "folded.onnx", data)
    assert any("BatchNorm looks folded into 2 of 2 layers" in w.value for w in app.warning)
    app.switch_page(EXPORT).run()
    assert any("BatchNorm looks folded" in w.value and "do_constant_folding=False" in w.value for w in app.warning)


def test_hostile_and_broken_onnx_uploads_leave_the_model_as_it_was(new_app, tmp_path):
    from onnx import TensorProto, helper

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 16)
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 1, 1, 1])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=str(secret))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], [weight])
    external = helper.make_model(graph).SerializeToString()
    app = new_app(MODEL_PAGE)
    before = app.session_state["workspace"].source
    for name, data, message in (("external.onnx", external, "a path, not a file uploaded with it"),
                                ("truncated.onnx", export_onnx(_small_net(), (1, 3, 16, 16), dynamo=False)[:500], "not an ONNX model"),
                                ("notes.onnx", b"just some text\n" * 10, "not an ONNX model")):
        upload_onnx(app, name, data)
        assert app.session_state["workspace"].source == before
        assert any(message in error for error in errors(app)), (name, errors(app))


def test_a_dynamo_export_uploads_with_its_external_data_file(new_app, tmp_path):
    # torch.onnx.export(..., dynamo=True) to a path writes model.onnx and model.onnx.data by default.
    path = tmp_path / "net.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_small_net(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=True, optimize=False)
    assert (tmp_path / "net.onnx.data").is_file()
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("upload").run()
    app.file_uploader(key="upload_file").upload("net.onnx", path.read_bytes()).run()
    load = next(button for button in app.button if button.label == "Load the ONNX model")
    assert load.disabled and any("Still needed: net.onnx.data" in c.value for c in app.caption)
    app.file_uploader(key="onnx_data_files").upload("net.onnx.data", (tmp_path / "net.onnx.data").read_bytes()).run()
    press(app, "Load the ONNX model")
    assert app.session_state["workspace"].source.kind == "onnx" and not errors(app)
    assert {m.label: m.value for m in app.metric}["Prunable layers"] == "3"
    from dashboard import cache

    loaded = cache.load_model(app.session_state["workspace"].source, "cpu", app.session_state["workspace"].upload_state)
    expected = fpgm_core.layer_scores(_small_net(), "l2")
    for ours, theirs in zip(fpgm_core.layer_scores(loaded.model, "l2").values(), expected.values()):
        assert torch.allclose(ours, theirs, rtol=1e-6)


# --- your own code ---------------------------------------------------------------------------------


def test_factories_appear_only_when_the_server_names_them(new_app, monkeypatch):
    app = new_app(MODEL_PAGE)
    assert "factory" not in app.radio(key="source_kind").options
    assert any("--factory package.module:callable" in c.value for c in app.caption)
    monkeypatch.setenv(FACTORIES_ENV, "factory_models:small_net, factory_models:no_shape")
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("factory").run()
    assert app.selectbox(key="factory_spec").options == ["factory_models:small_net", "factory_models:no_shape"]
    press(app, "Load factory_models:small_net")
    assert app.session_state["workspace"].source == ModelSource("factory", "factory_models:small_net", "default")
    assert [header.value for header in app.subheader][-1] == "factory_models:small_net · your code"
    assert any("Input `1×3×16×16`" in c.value for c in app.caption)
    # A model that declares no shape gets one typed on the page.
    app.selectbox(key="factory_spec").set_value("factory_models:no_shape").run()
    press(app, "Load factory_models:no_shape")
    assert any("declares no input shape" in error for error in errors(app))
    app.text_input(key="factory_shape").input("1,3,12,12").run()
    press(app, "Load factory_models:no_shape")
    assert app.session_state["workspace"].source.input_shape == (1, 3, 12, 12) and not errors(app)
    app.switch_page(EXPORT).run()
    assert not app.exception and not errors(app)
    assert "--input-shape 1,3,12,12" in app.code[-1].value and "from factory_models import no_shape" in app.code[0].value


def test_weights_upload_into_a_factory_architecture(new_app, monkeypatch):
    monkeypatch.setenv(FACTORIES_ENV, "factory_models:small_net")
    state = {k: v * 2 if v.is_floating_point() else v for k, v in factory_models.SmallNet().state_dict().items()}
    app = new_app(MODEL_PAGE)
    app.radio(key="source_kind").set_value("upload").run()
    app.file_uploader(key="upload_file").upload("mine.safetensors", save_safetensors(state))
    app.selectbox(key="upload_arch").set_value("factory_models:small_net").run()
    press(app, "Load the uploaded weights")
    source = app.session_state["workspace"].source
    assert (source.kind, source.arch) == ("upload", "factory_models:small_net") and not errors(app)
    from dashboard import cache

    loaded = cache.load_model(source, "cpu", app.session_state["workspace"].upload_state)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state.items())


def test_a_session_cannot_run_a_factory_the_server_was_not_started_with(new_app, monkeypatch):
    """A source naming code (as a shared link or a tampered state could) runs nothing unless configured."""
    monkeypatch.setenv(FACTORIES_ENV, "factory_models:small_net")
    app = new_app(MODEL_PAGE)
    calls = len(factory_models.CALLS)
    app.session_state["workspace"] = Workspace(ModelSource("factory", "factory_models:raises", "default"))
    app.run()
    assert any("not one of this server's model factories" in error for error in errors(app))
    app.session_state["workspace"] = Workspace(ModelSource("upload", "factory_models:raises", "w.pt", "x", "state_dict"), {})
    app.run()
    assert any("not one of this server's model factories" in error for error in errors(app))
    assert len(factory_models.CALLS) == calls  # the callable never ran
