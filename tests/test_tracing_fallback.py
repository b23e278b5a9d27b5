"""Where torch.fx cannot trace the model, the user is told: the Sparsity and Export pages, the CLI, the recipe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fpgm_core
from dashboard import exports
from fpgm_core import LoadedModel, MaskCheckError, tracing


@pytest.fixture
def untraceable(monkeypatch):
    """Every model looks untraceable to fx (as mobilevit does, whose forward branches on shapes)."""

    def refuse(model):
        raise torch.fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")

    monkeypatch.setattr(tracing, "_trace", refuse)
    monkeypatch.setattr(tracing, "_TRACES", type(tracing._TRACES)())  # no trace cached from earlier tests


@pytest.mark.parametrize("page", ["pages/sparsity.py", "pages/export.py"])
def test_pages_say_when_registration_order_stood_in_for_the_data_flow(new_app, untraceable, page):
    app = new_app(page)
    notes = [w.value for w in app.warning if "could not trace" in w.value]
    assert len(notes) == 1 and "registration order" in notes[0] and "DemoNet (TraceError" in notes[0]


def test_pages_say_nothing_when_the_model_traces(new_app):
    app = new_app("pages/sparsity.py")
    assert not [w.value for w in app.warning if "could not trace" in w.value]


def test_the_dashboards_checkpoint_is_checked_like_the_clis():
    class UnzeroableNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.norm = nn.GroupNorm(2, 4, affine=False)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.norm(self.conv(x)).mean((2, 3)))

    loaded = LoadedModel(UnzeroableNorm().eval(), "custom", "none", (1, 1, 8, 8), None)
    with pytest.raises(MaskCheckError, match="not zero after GroupNorm 'norm'"):
        exports.checkpoint_bytes(loaded, {"conv": torch.tensor([True, False, True, True])}, "safetensors")
    demo = fpgm_core.build_model("demo", "default")
    masks = fpgm_core.plan_masks(demo.model, fpgm_core.SparsityPlan(sparsity=0.3))
    assert exports.checkpoint_bytes(demo, masks, "safetensors")


def test_the_cli_warns_once_and_the_recipe_records_it(untraceable, tmp_path, capsys):
    import json

    from cli_runner import run_cli

    out = tmp_path / "demo.safetensors"
    code, _, err = run_cli(["prune", "--arch", "demo", "--weights", "default", "--sparsity", "0.3", "--out", out], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: torch.fx could not trace DemoNet")]
    assert len(warnings) == 1 and "registration order" in warnings[0]
    recipe = json.loads(out.with_suffix("").with_suffix(".recipe.json").read_text())
    assert recipe["tracing"]["data_flow"] is False and "TraceError" in recipe["tracing"]["error"]
