"""AppTest: uploading models on the Model page — state_dicts, TorchScript, torch.export, and hostile files.

Every hostile file here would create a marker file if it were unpickled the ordinary way (each
test first proves that on a copy); the dashboard must refuse it with a clear message and the
marker must never appear.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

import fpgm_core
from dashboard.sources import ModelSource

MODEL_PAGE = "pages/model.py"


class CreatesMarker:
    """Unpickling this runs code: it creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


def demo_weights() -> dict[str, torch.Tensor]:
    """The demo model's weights, changed so that a successful upload is recognisable."""
    model = fpgm_core.build_model("demo", "default").model
    return {name: (tensor * 2 if tensor.is_floating_point() else tensor.clone()) for name, tensor in model.state_dict().items()}


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def upload(app, filename: str, data: bytes, arch: str = "demo"):
    """Choose "Upload a file", upload ``data`` as ``filename`` for ``arch``, press Load."""
    app.radio(key="source_kind").set_value("upload").run()
    app.file_uploader(key="upload_file").upload(filename, data)
    app.selectbox(key="upload_arch").set_value(arch).run()
    button = next(button for button in app.button if button.label == "Load the uploaded weights")
    button.click().run()
    assert not app.exception, app.exception
    return app


def loaded_state(app) -> dict[str, torch.Tensor]:
    from dashboard import cache

    session = app.session_state
    workspace = session["workspace"]
    return cache.load_model(workspace.source, session["device"], workspace.upload_state).model.state_dict()


def assert_loaded(app, expected: dict[str, torch.Tensor], upload_format: str) -> None:
    source = app.session_state["workspace"].source
    assert source.kind == "upload" and source.upload_format == upload_format, source
    assert not app.error, [error.value for error in app.error]
    state = loaded_state(app)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name].cpu(), expected[name]) for name in expected)


def assert_refused(app, *phrases: str) -> None:
    assert app.session_state["workspace"].source.kind != "upload"
    message = " ".join(error.value for error in app.error)
    for phrase in phrases:
        assert phrase in message, message


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_state_dict_pickle_upload_loads(new_app, suffix):
    weights = demo_weights()
    app = upload(new_app(MODEL_PAGE), f"digits{suffix}", torch_bytes(weights))
    assert_loaded(app, weights, "state_dict")
    assert app.success[0].value == f"Loaded digits{suffix} (state_dict) into demo."
    assert [header.value for header in app.subheader][-1] == f"demo · uploaded digits{suffix}"


def test_wrapped_state_dict_and_safetensors_upload_load(new_app):
    weights = demo_weights()
    app = upload(new_app(MODEL_PAGE), "checkpoint.pt", torch_bytes({"state_dict": weights, "epoch": torch.tensor(3)}))
    assert_loaded(app, weights, "state_dict")
    app = upload(new_app(MODEL_PAGE), "digits.safetensors", save_safetensors(weights))
    assert_loaded(app, weights, "state_dict")


@pytest.mark.parametrize(
    ("protocol", "phrases"),
    [
        # A bare pickle of any protocol is refused unread, with why and what to upload instead.
        (2, ("refused to load", "plain Python pickle", "run code", "model.state_dict()")),
        (pickle.HIGHEST_PROTOCOL, ("refused to load", "plain Python pickle", "run code", "model.state_dict()")),
    ],
)
def test_hostile_raw_pickle_is_refused_and_never_runs(new_app, tmp_path, protocol, phrases):
    data = pickle.dumps({"conv1.weight": CreatesMarker(tmp_path / "marker")}, protocol=protocol)
    pickle.loads(pickle.dumps(CreatesMarker(tmp_path / "proof"), protocol=protocol))
    assert (tmp_path / "proof").exists(), "the payload must really run when unpickled"
    app = upload(new_app(MODEL_PAGE), "weights.pt", data)
    assert_refused(app, "weights.pt", *phrases)
    assert not (tmp_path / "marker").exists()


def test_hostile_torch_save_archive_is_refused_and_never_runs(new_app, tmp_path):
    data = torch_bytes({"conv1.weight": CreatesMarker(tmp_path / "marker")})
    torch.load(io.BytesIO(torch_bytes(CreatesMarker(tmp_path / "proof"))), weights_only=False)
    assert (tmp_path / "proof").exists()
    app = upload(new_app(MODEL_PAGE), "weights.pth", data)
    assert_refused(app, "refused to load")
    assert not (tmp_path / "marker").exists()


def test_pickled_whole_module_is_refused_with_what_to_upload_instead(new_app):
    model = fpgm_core.build_model("demo", "default").model
    app = upload(new_app(MODEL_PAGE), "model.pt", torch_bytes(model))
    assert_refused(app, "nn.Module", "torch.save(model.state_dict(), 'model.pt')")


def test_wrong_architecture_names_the_keys_that_do_not_match(new_app):
    app = upload(new_app(MODEL_PAGE), "digits.pt", torch_bytes(demo_weights()), arch="resnet18")
    assert_refused(
        app, "do not fit resnet18", "missing keys: layer1.0.conv1.weight", "unexpected keys: layer1.conv1.weight",
        "wrong shapes (file vs model): conv1.weight (16, 1, 3, 3) vs (64, 3, 7, 7)",
    )


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_upload_loads_its_weights_without_running_it(new_app):
    weights = demo_weights()
    model = fpgm_core.build_model("demo", "none").model
    model.load_state_dict(weights)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    app = upload(new_app(MODEL_PAGE), "digits_scripted.pt", buffer.getvalue())
    assert_loaded(app, weights, "torchscript")
    app.switch_page("pages/export.py").run()
    labels = [button.label for button in app.download_button]
    assert "digits_scripted.safetensors (unpruned weights)" in labels
    assert "--weights digits_scripted.safetensors" in app.code[-1].value


def test_hostile_torchscript_archive_is_refused_and_never_runs(new_app, tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("archive/constants.pkl", pickle.dumps(()))
        zf.writestr("archive/data.pkl", pickle.dumps(CreatesMarker(tmp_path / "marker")))
        zf.writestr("archive/version", "4\n")
    app = upload(new_app(MODEL_PAGE), "scripted.pt", archive.getvalue())
    assert_refused(app, "TorchScript archive holds more than modules and tensors", "not allowed")
    assert not (tmp_path / "marker").exists()


def test_torch_export_program_upload_loads(new_app):
    weights = demo_weights()
    model = fpgm_core.build_model("demo", "none").model
    model.load_state_dict(weights)
    program = torch.export.export(model.eval(), (torch.zeros(1, 1, 8, 8),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    app = upload(new_app(MODEL_PAGE), "digits.pt2", buffer.getvalue())
    assert_loaded(app, weights, "export")


def test_torch_export_archive_with_a_hostile_pickled_weight_is_refused(new_app, tmp_path):
    model = fpgm_core.build_model("demo", "none").model
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 1, 8, 8),)), buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    hostile = io.BytesIO()
    with zipfile.ZipFile(hostile, "w") as out:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("model_weights_config.json"):
                table = json.loads(data)
                first = next(iter(table["config"]))
                table["config"][first]["use_pickle"] = True
                table["config"][first]["path_name"] = "evil"
                data = json.dumps(table).encode()
                out.writestr(name.replace("model_weights_config.json", "evil"), torch_bytes(CreatesMarker(tmp_path / "marker")))
            out.writestr(name, data)
    app = upload(new_app(MODEL_PAGE), "digits.pt2", hostile.getvalue())
    assert_refused(app, "pickled Python object", "was not read")
    assert not (tmp_path / "marker").exists()


def test_non_model_files_get_a_plain_message(new_app):
    app = upload(new_app(MODEL_PAGE), "notes.pt", b"just some text, not a checkpoint")
    assert_refused(app, "notes.pt")
    app = upload(new_app(MODEL_PAGE), "broken.safetensors", b"\x00\x01garbage")
    assert_refused(app, "not a valid safetensors file")


def test_upload_source_identity_is_the_content_digest(new_app):
    weights = demo_weights()
    app = upload(new_app(MODEL_PAGE), "digits.pt", torch_bytes(weights))
    first: ModelSource = app.session_state["workspace"].source
    weights["conv1.weight"][0, 0, 0, 0] += 1
    app = upload(app, "digits.pt", torch_bytes(weights))
    second: ModelSource = app.session_state["workspace"].source
    assert first.weights == second.weights and first.digest != second.digest


def _broken_uploads() -> dict[str, tuple[str, bytes, str]]:
    weights = demo_weights()
    nan = {k: v.clone() for k, v in weights.items()}
    nan["down.weight"][0, 0, 0, 0] = float("nan")
    inf = {k: v.clone() for k, v in weights.items()}
    inf["fc.bias"][3] = float("inf")
    missing = {k: v for k, v in weights.items() if k != "fc.bias"}
    extra = {**weights, "head.weight": torch.zeros(3)}
    misshaped = {**weights, "fc.weight": torch.zeros(5, 32)}
    safetensors_bytes = save_safetensors(weights)
    corrupt_header = b"\xff\xff\x00\x00\x00\x00\x00\x00" + safetensors_bytes[8:]
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    return {
        "zero-byte": ("empty.pt", b"", "empty"),
        "truncated": ("cut.pt", torch_bytes(weights)[:500], "cut.pt"),
        "renamed image": ("photo.pth", png, "photo.pth"),
        "renamed text": ("notes.safetensors", b"hello world", "not a valid safetensors file"),
        "corrupt safetensors header": ("bad.safetensors", corrupt_header, "not a valid safetensors file"),
        "missing key": ("missing.pt", torch_bytes(missing), "missing keys: fc.bias"),
        "extra key": ("extra.pt", torch_bytes(extra), "unexpected keys: head.weight"),
        "mis-shaped key": ("shape.pt", torch_bytes(misshaped), "fc.weight (5, 32) vs (10, 32)"),
        "nan weights": ("nan.safetensors", save_safetensors(nan), "NaN or Inf"),
        "inf weights": ("inf.pt", torch_bytes(inf), "NaN or Inf"),
    }


@pytest.mark.parametrize("case", sorted(_broken_uploads()))
def test_broken_upload_leaves_the_session_model_and_plan_untouched(new_app, case):
    filename, data, phrase = _broken_uploads()[case]
    app = new_app(MODEL_PAGE)
    app.run()
    source_before = app.session_state["workspace"].source
    plan_before = {key: app.session_state[key] for key in ("sparsity_pct", "metric", "mode") if key in app.session_state}
    app = upload(app, filename, data)
    assert_refused(app, phrase)
    assert app.session_state["workspace"].source == source_before
    assert {key: app.session_state[key] for key in plan_before} == plan_before
