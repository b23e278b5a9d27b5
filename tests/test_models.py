"""fpgm_core.models: safe checkpoint reading and clear errors for every kind of bad file."""

import io
import pathlib
import pickle
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save as save_safetensors

import fpgm_core.models as models
from fpgm_core import ModelLoadError, build_model, load_weights, read_state_dict


class Hostile:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _torch_bytes(obj, **kwargs):
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda m: pickle.dumps(Hostile(m)),
        lambda m: _torch_bytes({"weight": torch.zeros(2), "evil": Hostile(m)}),
        lambda m: _torch_bytes({"weight": torch.zeros(2), "evil": Hostile(m)}, _use_new_zipfile_serialization=False),
        lambda m: _torch_bytes(torch.nn.Linear(2, 2)),
    ],
    ids=["raw-pickle", "nested-in-state-dict-zip", "legacy-format", "whole-module"],
)
def test_code_carrying_pickles_are_refused_and_never_run(tmp_path, make):
    marker = tmp_path / "pwned"
    data = make(marker)
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="refused to load|not a readable"):
        read_state_dict(data, "upload.pt")
    assert not marker.exists(), "unpickling ran code"


def test_whole_module_refusal_explains_what_to_upload():
    with pytest.raises(ModelLoadError, match=r"state_dict\(\)"):
        read_state_dict(_torch_bytes(torch.nn.Linear(2, 2)), "model.pt")


@pytest.mark.parametrize(
    "data,name,message",
    [
        (b"", "a.pt", "empty"),
        (_torch_bytes({"w": torch.zeros(3)})[:100], "a.pt", "truncated|not a readable"),
        (b"hello, I am a text file\n" * 10, "notes.pth", "truncated|not a readable"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image.pt", "truncated|not a readable"),
        (b"\xff\xff\xff\xff\x00\x00\x00\x00{garbage", "a.safetensors", "not a valid safetensors"),
        (save_safetensors({"w": torch.zeros(3)})[:20], "a.safetensors", "not a valid safetensors"),
        (_torch_bytes([torch.zeros(2)]), "a.pt", "expected a state_dict"),
        (_torch_bytes({"w": torch.zeros(2), "step": 3}), "a.pt", "not tensors"),
    ],
    ids=["empty", "truncated", "text", "image", "corrupt-header", "cut-safetensors", "list", "non-tensor"],
)
def test_broken_files_get_named_errors(data, name, message):
    with pytest.raises(ModelLoadError, match=message):
        read_state_dict(data, name)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")


def test_wrapped_and_dataparallel_checkpoints_unwrap():
    state = {"module.weight": torch.ones(2, 2), "module.bias": torch.zeros(2)}
    assert set(read_state_dict(_torch_bytes({"state_dict": state, "epoch": 3}), "c.pt")) == {"weight", "bias"}


def test_wrong_architecture_names_missing_unexpected_and_misshaped_keys():
    state = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ModelLoadError, match="missing keys: .*unexpected keys: ") as info:
        load_weights(torchvision.models.mobilenet_v2(weights=None), state)
    assert "conv1.weight" in str(info.value)
    state["fc.weight"] = torch.zeros(10, 512)
    with pytest.raises(ModelLoadError, match=r"wrong shapes .*fc.weight \(10, 512\) vs \(1000, 512\)"):
        load_weights(torchvision.models.resnet18(weights=None), state)


def test_nan_weights_are_refused():
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ModelLoadError, match="layer1.0.conv1.weight.*NaN or Inf"):
        load_weights(torchvision.models.resnet18(weights=None), state)


def test_build_model_from_file_and_random_init_is_reproducible(tmp_path):
    path = tmp_path / "r18.safetensors"
    path.write_bytes(save_safetensors(torchvision.models.resnet18(weights=None).state_dict()))
    loaded = build_model("resnet18", path)
    assert loaded.weights == "r18.safetensors" and loaded.input_shape == (1, 3, 224, 224)
    a, b = build_model("resnet18", "none").model, build_model("resnet18", "none").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_architecture_is_named():
    with pytest.raises(ModelLoadError, match="unknown architecture 'resnet9000'"):
        build_model("resnet9000")


def test_offline_default_weights_give_a_clear_message_or_a_notice(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ModelLoadError, match="pretrained weights for resnet18 could not be loaded.*URLError"):
        build_model("resnet18", "default")
    fallback = build_model("resnet18", "default", allow_random_fallback=True)
    assert "random initialisation" in fallback.notice
    assert isinstance(fallback.model, torchvision.models.ResNet)
