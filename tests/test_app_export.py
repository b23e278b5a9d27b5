"""AppTest: the Export page offers the masked checkpoint, masks and recipe, and code that really loads them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

import fpgm_core
from dashboard import exports
from dashboard.sources import ModelSource

EXPORT = "pages/export.py"
STEM = "demo-fpgm"


def content(served: dict, name: str) -> bytes:
    """The bytes a download button serves (``served`` is the ``downloads`` fixture of conftest.py)."""
    value = served[name]
    value = value() if callable(value) else value
    return value.encode() if isinstance(value, str) else bytes(value)


def plan_of(app) -> fpgm_core.SparsityPlan:
    state = app.session_state
    return fpgm_core.SparsityPlan(
        sparsity=state["sparsity_pct"] / 100, metric=state["metric"], overrides=state["workspace"].overrides, mode=state["mode"],
        max_layer_sparsity=state["max_layer_pct"] / 100, include_output=state["include_output"],
    )


def test_export_page_offers_every_file(new_app, downloads):
    app = new_app(EXPORT)
    labels = [button.label for button in app.download_button]
    assert labels == [f"{STEM}.safetensors", f"{STEM}.pt", f"{STEM}.masks.safetensors", f"{STEM}.masks.pt", f"{STEM}.recipe.json"]
    # The checkpoints are built only when clicked; masks and recipe are small and sent with the page.
    assert all(app.download_button[i].proto.deferred_file_id for i in (0, 1))
    assert set(downloads) == set(labels)
    assert app.code[-1].value == (
        f"python -m fpgm_core prune --arch demo --weights default --recipe {STEM}.recipe.json --out {STEM}.safetensors"
    )
    assert "strict=True" in app.code[0].value


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_downloads_load_strictly_with_zeros_exactly_at_the_masked_filters(new_app, downloads, tmp_path, fmt):
    app = new_app("pages/sparsity.py")
    app.slider(key="sparsity_pct").set_value(40).run()
    app.switch_page(EXPORT).run()
    if fmt == "pt":
        app.radio(key="snippet_format").set_value("pt").run()
    for name in (f"{STEM}.{fmt}", f"{STEM}.masks.{fmt}", f"{STEM}.recipe.json"):
        (tmp_path / name).write_bytes(content(downloads, name))
    # The page's own snippet, run as a user would, in the download folder.
    namespace: dict = {}
    cwd = Path.cwd()
    try:
        os.chdir(tmp_path)
        exec(app.code[0].value, namespace)
    finally:
        os.chdir(cwd)
    model, masks = namespace["model"], namespace["masks"]
    original = fpgm_core.build_model("demo", "default").model
    expected = fpgm_core.plan_masks(original, plan_of(app), device="cpu")
    assert masks.keys() == expected.keys()
    modules, originals = dict(model.named_modules()), dict(original.named_modules())
    for name, keep in expected.items():
        assert torch.equal(masks[name], keep)
        weight = modules[name].weight.detach()
        assert bool((weight[~keep] == 0).all()), name
        assert torch.equal(weight[keep], originals[name].weight.detach()[keep]), name
    recipe = fpgm_core.read_recipe(tmp_path / f"{STEM}.recipe.json")
    assert recipe["model"]["fingerprint"] == fpgm_core.model_fingerprint(original)
    replayed = fpgm_core.plan_masks(original, fpgm_core.plan_from_recipe(recipe), device="cpu")
    assert all(torch.equal(replayed[name], expected[name]) for name in expected)
    assert recipe["layers"]["conv1"]["pruned"] == round(0.4 * 16)


def test_exporting_never_modifies_the_cached_model(new_app, downloads):
    from dashboard import cache

    app = new_app(EXPORT)
    state = app.session_state
    model = cache.load_model(state["workspace"].source, state["device"], None).model
    before = fpgm_core.model_fingerprint(model)
    for name in (f"{STEM}.safetensors", f"{STEM}.pt"):
        assert content(downloads, name)
    assert fpgm_core.model_fingerprint(model) == before


def test_torchvision_export_snippet_and_command(new_app, downloads, tmp_path):
    app = new_app("pages/model.py")
    app.radio(key="source_kind").set_value("torchvision").run()
    app.selectbox(key="tv_arch").set_value("resnet18")
    app.radio(key="tv_weights").set_value("none").run()
    app.button[0].click().run()
    app.switch_page(EXPORT).run()
    assert not app.exception
    assert 'torchvision.models.get_model("resnet18", weights=None)' in app.code[0].value
    assert app.code[-1].value == (
        "python -m fpgm_core prune --arch resnet18 --weights none --recipe resnet18-fpgm.recipe.json "
        "--out resnet18-fpgm.safetensors"
    )
    state = load_safetensors(content(downloads, "resnet18-fpgm.safetensors"))
    model = fpgm_core.build_model("resnet18", "none").model
    model.load_state_dict(state, strict=True)
    recipe = json.loads(content(downloads, "resnet18-fpgm.recipe.json"))
    assert recipe["model"]["arch"] == "resnet18" and recipe["model"]["weights"] == "none"
    assert recipe["layers"]["conv1"]["pruned"] == round(0.3 * 64)


def test_weights_argument_for_uploads():
    loaded = fpgm_core.build_model("demo", "default")
    assert exports.weights_argument(loaded, ModelSource("upload", "demo", "mine.pt", "ab", "state_dict")) == "mine.pt"
    assert exports.weights_argument(loaded, ModelSource("upload", "demo", "mine.pt2", "ab", "export")) == "mine.safetensors"
    assert exports.weights_argument(loaded, ModelSource("demo", "demo", "default")) == "default"
    data = exports.original_weights_bytes(loaded)
    assert load_safetensors(data).keys() == loaded.model.state_dict().keys()


def test_the_page_command_reproduces_the_download_headlessly(new_app, downloads, tmp_path):
    app = new_app("pages/sparsity.py")
    app.slider(key="sparsity_pct").set_value(55).run()
    app.radio(key="mode").set_value("global").run()
    app.switch_page(EXPORT).run()
    (tmp_path / "from-dashboard.safetensors").write_bytes(content(downloads, f"{STEM}.safetensors"))
    (tmp_path / f"{STEM}.recipe.json").write_bytes(content(downloads, f"{STEM}.recipe.json"))
    command = shlex.split(app.code[-1].value)
    assert command[:4] == ["python", "-m", "fpgm_core", "prune"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ours = load_safetensors((tmp_path / "from-dashboard.safetensors").read_bytes())
    theirs = load_safetensors((tmp_path / f"{STEM}.safetensors").read_bytes())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_slimming_the_default_model_serves_a_verified_pt2(new_app, downloads):
    import io

    app = new_app(EXPORT)
    assert not any(button.label.endswith(".pt2") for button in app.download_button)  # nothing slimmed yet
    app.button(key="slim_button").click().run()
    assert not app.exception, app.exception
    assert not app.error, [error.value for error in app.error]
    assert any("Verification **passed**" in text.value for text in app.markdown)
    measured = app.dataframe[0].value
    assert measured.loc["Parameters", "after"] != measured.loc["Parameters", "before"]  # channels were removed
    assert {"Parameters", "FLOPs / forward", "CPU latency, batch 1", "CPU latency, batch 32"} <= set(measured.index)
    labels = [button.label for button in app.download_button]
    assert {f"{STEM}-slim.pt2", f"{STEM}-slim.onnx", f"{STEM}-slim.pt"} <= set(labels)
    program = torch.export.load(io.BytesIO(content(downloads, f"{STEM}-slim.pt2")))
    output = program.module()(torch.zeros(1, 1, 8, 8))
    assert output.shape[0] == 1 and torch.isfinite(output).all()


def test_a_model_that_cannot_be_slimmed_names_the_layer_and_keeps_the_masked_export(new_app, downloads):
    app = new_app("pages/model.py")
    app.radio(key="source_kind").set_value("torchvision").run()
    app.selectbox(key="tv_arch").set_value("shufflenet_v2_x0_5")
    app.radio(key="tv_weights").set_value("none").run()
    app.button[0].click().run()
    assert not app.exception, app.exception
    app.switch_page(EXPORT).run()
    app.button(key="slim_button").click().run()
    assert not app.exception, app.exception
    errors = " ".join(error.value for error in app.error)
    assert "stage" in errors and "branch2" in errors, errors  # the blocking layer is named
    labels = [button.label for button in app.download_button]
    assert any(label.endswith(".safetensors") for label in labels), labels  # masked export still offered
    assert not any(label.endswith(".pt2") for label in labels)
