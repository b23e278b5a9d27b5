"""AppTest: an export that fails partway says why on the Export page and leaves the session as it was.

Faults are injected where a real one would strike: the serializer writes part of a file and then
fails (a full disk, no memory), or slimming stops after it has cut its copy of the model. Each test
then removes the fault and exports from the same session.
"""

from __future__ import annotations

import errno
import io

import pytest
import safetensors.torch
import torch
from safetensors.torch import load as load_safetensors

import fpgm_core.slim
from fpgm_core import ExportError
from test_app_export import content

EXPORT = "pages/export.py"
STEM = "demo-fpgm"
PLAN_KEYS = ("sparsity_pct", "metric", "mode", "max_layer_pct", "include_output")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cached_model(app) -> torch.nn.Module:
    from dashboard import cache

    state = app.session_state
    workspace = state["workspace"]
    return cache.load_model(workspace.source, state["device"], workspace.upload_state).model


def snapshot(app) -> tuple[object, dict, dict[str, torch.Tensor]]:
    """The session's model source, plan values and model weights (copied)."""
    state = app.session_state
    plan = {**{key: state[key] for key in PLAN_KEYS}, "overrides": state["workspace"].overrides}
    return state["workspace"].source, plan, {name: tensor.clone() for name, tensor in cached_model(app).state_dict().items()}


def assert_unchanged(app, before: tuple[object, dict, dict[str, torch.Tensor]]) -> None:
    source, plan, weights = snapshot(app)
    assert source == before[0]
    assert plan == before[1]
    assert weights.keys() == before[2].keys()
    assert all(torch.equal(weights[name], before[2][name]) for name in weights), "the cached model changed"


def errors(app) -> str:
    return " ".join(error.value for error in app.error)


def labels(app) -> list[str]:
    return [button.label for button in app.download_button]


def planned_export(new_app):
    """The Export page after a plan that differs from the defaults in every part."""
    app = new_app("pages/sparsity.py")
    app.slider(key="sparsity_pct").set_value(55).run()
    app.radio(key="mode").set_value("global").run()
    app.radio(key="metric").set_value("l1").run()
    app.session_state["workspace"] = app.session_state["workspace"].with_overrides({"conv1": 0.25})
    app.switch_page(EXPORT).run()
    assert not app.exception, app.exception
    assert not app.error, errors(app)
    return app


class PartialWrite:
    """A serializer that writes half of the real output into its target, then fails with ``error``."""

    def __init__(self, real, error: BaseException) -> None:
        self.real, self.error, self.calls = real, error, 0

    def torch_save(self, obj, target, *args, **kwargs):
        self.calls += 1
        buffer = io.BytesIO()
        self.real(obj, buffer, *args, **kwargs)
        target.write(buffer.getvalue()[: buffer.tell() // 2])
        raise self.error

    def safetensors_save(self, tensors, *args, **kwargs):
        self.calls += 1
        self.real(tensors, *args, **kwargs)  # the whole file was built; handing it over fails
        raise self.error


FAULTS = {
    # format that fails: (module whose serializer fails, its attribute, the error, what the message must name)
    "pt": (torch, "save", OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    "safetensors": (safetensors.torch, "save", MemoryError("could not allocate 44 MB"), "MemoryError: could not allocate"),
}


@pytest.mark.parametrize("fmt", sorted(FAULTS))
def test_a_serializer_failing_partway_names_the_file_and_keeps_the_session(new_app, downloads, monkeypatch, fmt):
    module, attribute, error, phrase = FAULTS[fmt]
    other = "safetensors" if fmt == "pt" else "pt"
    app = planned_export(new_app)
    before = snapshot(app)
    fault = PartialWrite(getattr(module, attribute), error)
    monkeypatch.setattr(module, attribute, fault.torch_save if module is torch else fault.safetensors_save)

    app.run()  # the masks are built with the page: their failure shows at once
    assert not app.exception, app.exception
    assert fault.calls
    assert f"{STEM}.masks.{fmt} could not be built" in errors(app) and phrase in errors(app), errors(app)
    assert "the model and the plan are unchanged" in errors(app)
    # No partial file is offered; the other format still is, whole.
    assert f"{STEM}.masks.{fmt}" not in labels(app)
    assert {f"{STEM}.masks.{other}", f"{STEM}.{fmt}", f"{STEM}.{other}", f"{STEM}.recipe.json"} <= set(labels(app))

    # The checkpoint is built when clicked: it fails then, serving nothing, and says why on the next run.
    with pytest.raises(ExportError, match=rf"{STEM}\.{fmt} could not be built"):
        content(downloads, f"{STEM}.{fmt}")
    assert content(downloads, f"{STEM}.{other}")
    app.run()
    assert not app.exception, app.exception
    assert f"{STEM}.{fmt} could not be built" in errors(app) and phrase in errors(app), errors(app)
    assert_unchanged(app, before)

    monkeypatch.setattr(module, attribute, fault.real)
    app.run()
    assert not app.exception, app.exception
    assert not app.error, errors(app)  # a failure is told once, not for ever
    assert labels(app) == [f"{STEM}.safetensors", f"{STEM}.pt", f"{STEM}.masks.safetensors", f"{STEM}.masks.pt",
                           f"{STEM}.recipe.json"]
    checkpoint = load_safetensors(content(downloads, f"{STEM}.safetensors"))
    from_pt = torch.load(io.BytesIO(content(downloads, f"{STEM}.pt")), weights_only=True)
    assert checkpoint.keys() == from_pt.keys() and all(torch.equal(checkpoint[k], from_pt[k]) for k in checkpoint)
    masks_pt = torch.load(io.BytesIO(content(downloads, f"{STEM}.masks.pt")), weights_only=True)
    masks = load_safetensors(content(downloads, f"{STEM}.masks.safetensors"))
    assert masks.keys() == masks_pt.keys() and all(torch.equal(masks[k], masks_pt[k]) for k in masks)
    assert not bool(masks["conv1"].all())  # the plan was applied, not an empty one
    assert_unchanged(app, before)


def test_slimming_that_stops_midway_says_why_and_can_be_retried(new_app, downloads, monkeypatch):
    app = planned_export(new_app)
    before = snapshot(app)
    real_prune = fpgm_core.slim._prune

    def prune_then_run_out_of_memory(selection):
        real_prune(selection)  # the analysed copy is cut: the failure comes after real work
        raise RuntimeError("not enough memory: you tried to allocate 536870912 bytes")

    monkeypatch.setattr(fpgm_core.slim, "_prune", prune_then_run_out_of_memory)
    app.button(key="slim_button").click().run()
    assert not app.exception, app.exception
    assert "Slimming stopped midway (RuntimeError: not enough memory" in errors(app), errors(app)
    assert any("masked export above still works" in info.value for info in app.info)
    assert not any(label.endswith(".pt2") for label in labels(app))
    assert {f"{STEM}.safetensors", f"{STEM}.masks.safetensors", f"{STEM}.recipe.json"} <= set(labels(app))
    assert_unchanged(app, before)

    monkeypatch.setattr(fpgm_core.slim, "_prune", real_prune)
    app.button(key="slim_button").click().run()  # an interrupted slim is not remembered as impossible
    assert not app.exception, app.exception
    assert not app.error, errors(app)
    assert any("Verification **passed**" in text.value for text in app.markdown)
    slim_pt = f"{STEM}-slim.pt"
    assert {f"{STEM}-slim.pt2", f"{STEM}-slim.onnx", slim_pt} <= set(labels(app))

    # The slimmed .pt is built when clicked; a full disk then is told on the next run.
    fault = PartialWrite(torch.save, OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(torch, "save", fault.torch_save)
    with pytest.raises(ExportError, match=rf"{slim_pt} could not be built"):
        content(downloads, slim_pt)
    monkeypatch.setattr(torch, "save", fault.real)
    app.run()
    assert not app.exception, app.exception
    assert f"{slim_pt} could not be built (OSError: [Errno 28] No space left on device)" in errors(app), errors(app)
    assert slim_pt in labels(app)  # offered again: the next click builds it
    slimmed = torch.load(io.BytesIO(content(downloads, slim_pt)), weights_only=False)
    assert slimmed(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert_unchanged(app, before)
