"""fpgm_core.export and recipe: strict round trips, whole-or-nothing writes, replayable recipes."""

import json
import os

import pytest
import torch
import torchvision
from safetensors.torch import load_file

import fpgm_core.export as export_module
from fpgm_core import (
    ExportError,
    SparsityPlan,
    export_masked,
    make_recipe,
    model_fingerprint,
    plan_counts,
    plan_from_recipe,
    plan_masks,
    prunable_layers,
    read_recipe,
)


@pytest.fixture(scope="module")
def resnet_and_masks():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    plan = SparsityPlan(sparsity=0.3, metric="l1", overrides={"layer1.0.conv1": 0.5})
    masks = plan_masks(model, plan, device="cpu")
    layers = prunable_layers(model)
    recipe = make_recipe(model, plan, plan_counts(layers, plan), layers, arch="resnet18", weights="none")
    return model, masks, recipe


def _load(path):
    return load_file(path) if str(path).endswith(".safetensors") else torch.load(path, weights_only=True)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_loads_strictly_with_zeros_exactly_where_masked(tmp_path, resnet_and_masks, suffix):
    model, masks, recipe = resnet_and_masks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    files = export_masked(model, masks, recipe, tmp_path / f"pruned{suffix}", input_shape=(1, 3, 64, 64))
    assert files.masks.name == f"pruned.masks{suffix}" and files.recipe.name == "pruned.recipe.json"
    state = _load(files.checkpoint)
    fresh = torchvision.models.resnet18(weights=None)
    fresh.load_state_dict(state, strict=True)
    saved_masks = _load(files.masks)
    assert saved_masks.keys() == masks.keys()
    for name, keep in masks.items():
        assert torch.equal(saved_masks[name], keep)
        weight = state[f"{name}.weight"]
        assert torch.all(weight[~keep] == 0) and torch.equal(weight[keep], before[f"{name}.weight"][keep])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "export modified the model"
    assert json.loads(files.recipe.read_text()) == recipe
    assert oct(os.stat(files.checkpoint).st_mode & 0o777) != oct(0o600)


def test_recipe_replay_gives_the_same_masks(resnet_and_masks):
    model, masks, recipe = resnet_and_masks
    text = json.dumps(recipe).encode()
    replayed = plan_masks(model, plan_from_recipe(read_recipe(text)), device="cpu")
    assert replayed.keys() == masks.keys() and all(torch.equal(replayed[k], masks[k]) for k in masks)
    assert recipe["model"]["fingerprint"] == model_fingerprint(model)
    assert recipe["layers"]["layer1.0.conv1"] == {"filters": 64, "pruned": 32, "sparsity": 0.5}


def test_failure_mid_export_leaves_nothing(tmp_path, resnet_and_masks, monkeypatch):
    model, masks, recipe = resnet_and_masks
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(export_module.os, "replace", failing_replace)
    with pytest.raises(ExportError, match="disk full"):
        export_masked(model, masks, recipe, tmp_path / "pruned.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_bad_output_name_is_refused(tmp_path, resnet_and_masks):
    model, masks, recipe = resnet_and_masks
    with pytest.raises(ExportError, match=r"\.pt, \.pth or \.safetensors"):
        export_masked(model, masks, recipe, tmp_path / "pruned.onnx")


def test_tied_weights_export_to_safetensors(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model = Tied()
    keep = torch.tensor([True, False, True, True])
    files = export_masked(model, {"a": keep}, {"format": "fpgm-recipe/1", "layers": {}}, tmp_path / "t.safetensors")
    Tied().load_state_dict(load_file(files.checkpoint), strict=True)


@pytest.mark.parametrize(
    "content,message",
    [(b"{", "not valid JSON"), (b'{"format": "other"}', "not an fpgm recipe"), (b'{"format": "fpgm-recipe/1", "layers": {"a": {"pruned": 1.5}}}', "integer")],
)
def test_bad_recipes_are_named(content, message):
    from fpgm_core import PlanError

    with pytest.raises(PlanError, match=message):
        read_recipe(content)
