"""AppTest: the session's state model (``dashboard/state.py``) — one key per value, one workspace.

What a page *draws* is checked, not what ``session_state`` holds after the run: a widget's proto
says which value the browser is told to show (``set_value``/``value``, else its default), and the
page's own text says which plan it computed with. (AppTest runs each page file on its own, without
``app.py``; the browser tests in ``test_e2e_browser.py`` cover the entry script.)
"""

from __future__ import annotations

import pytest

import fpgm_core
from dashboard.state import Workspace

HEATMAPS, SPARSITY, EXPORT = "pages/heatmaps.py", "pages/sparsity.py", "pages/export.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shown(widget) -> object:
    """What the browser is told to show for a widget: the value it is sent, else its default
    (a slider's numbers; a radio's option label)."""
    proto = widget.proto
    if widget.type == "slider":
        return list(proto.value) if proto.set_value else list(proto.default)
    return proto.raw_value if proto.set_value else proto.options[proto.default]


def heatmap_plan(app) -> str:
    """The plan the Heatmaps page computed with, from its score caption ("… · plan 30% · …")."""
    line = next(m.value for m in app.markdown if m.value.startswith("**FPGM scores**"))
    return line.split(" · plan ", 1)[1]


def pruned_total(percent: int) -> int:
    layers = fpgm_core.prunable_layers(fpgm_core.build_model("demo", "default").model)
    return sum(fpgm_core.prune_count(percent / 100, layer.filters) for layer in layers if not layer.is_output)


def test_a_value_set_on_one_page_is_the_value_the_next_page_draws_and_computes(new_app):
    # Streamlit 1.67 hands a session-persisted widget that registers on a newly opened page the
    # copy of its value taken when it last left a page: without resend_widget_values the Heatmaps
    # page below computed and showed 30 % after 55 % was set on the Sparsity page.
    app = new_app(HEATMAPS)
    app.switch_page(SPARSITY).run()
    app.slider(key="sparsity_pct").set_value(55).run()
    app.switch_page(HEATMAPS).run()
    assert not app.exception, app.exception
    assert heatmap_plan(app).startswith("55%")
    assert shown(app.slider(key="sparsity_pct")) == [55.0]
    app.slider(key="sparsity_pct").set_value(20).run()
    app.radio(key="metric").set_value("cosine").run()
    app.switch_page(SPARSITY).run()
    assert shown(app.slider(key="sparsity_pct")) == [20.0]
    assert shown(app.radio(key="metric")) == "cosine"
    filters = next(m.value for m in app.metric if m.label == "Filters pruned")
    assert filters.startswith(f"{pruned_total(20)} of ")


def test_a_new_session_sends_its_values_to_the_widgets_of_every_page(new_app):
    # The defaults are written in code on the first run; a page opened later must still tell the
    # browser 30 % (not the slider's minimum) and L2 (not the first metric listed).
    app = new_app()
    app.switch_page(SPARSITY).run()
    assert shown(app.slider(key="sparsity_pct")) == [30.0]
    assert shown(app.radio(key="metric")) == "L2"


def test_a_loaded_plan_is_one_assignment_and_its_widget_values_are_drawn(new_app):
    app = new_app(SPARSITY)
    app.slider(key="sparsity_pct").set_value(70).run()
    before: Workspace = app.session_state["workspace"]
    # What the Evaluate page's "Load into the Sparsity page" callback assigns (``load_plan``).
    app.session_state["workspace"] = before.with_loaded_plan({"conv1": 0.5}, "l1")
    app.run()
    assert not app.exception, app.exception
    after: Workspace = app.session_state["workspace"]
    assert after.overrides == {"conv1": 0.5} and after.editor_generation == before.editor_generation + 1
    assert after.pending == ()
    assert shown(app.slider(key="sparsity_pct")) == [0.0]
    assert shown(app.radio(key="metric")) == "L1"
    table = app.data_editor[0].value
    assert table.loc["conv1", "pruned"] == 8 and table["pruned"].sum() == 8


def test_clearing_overrides_drops_the_editor_s_pending_edits_too(new_app):
    app = new_app(SPARSITY)
    old_key = app.data_editor[0].key
    app.session_state[old_key] = {"edited_rows": {0: {"override": 0.75}}, "added_rows": [], "deleted_rows": []}
    app.run()
    assert app.session_state["workspace"].overrides == {"conv1": 0.75}
    next(button for button in app.button if button.label == "Clear overrides").click().run()
    assert app.session_state["workspace"].overrides == {}
    assert app.data_editor[0].key != old_key  # a new editor: the old one's edit cannot come back
    app.run()
    assert app.session_state["workspace"].overrides == {}
    assert app.data_editor[0].value.loc["conv1", "pruned"] == round(0.3 * 16)


def test_a_new_model_starts_a_new_plan_in_one_assignment(new_app):
    from dashboard.sources import ModelSource

    app = new_app(SPARSITY)
    app.session_state[app.data_editor[0].key] = {"edited_rows": {0: {"override": 0.75}}, "added_rows": [], "deleted_rows": []}
    app.run()
    before: Workspace = app.session_state["workspace"]
    app.switch_page("pages/model.py").run()
    app.radio(key="source_kind").set_value("torchvision").run()
    app.selectbox(key="tv_arch").set_value("resnet18")
    app.radio(key="tv_weights").set_value("none").run()
    app.button[0].click().run()
    assert not app.exception, app.exception
    after: Workspace = app.session_state["workspace"]
    assert after.source == ModelSource("torchvision", "resnet18", "none")
    assert after.overrides == {} and after.editor_generation == before.editor_generation + 1
    assert app.success[0].value.startswith("Loaded resnet18")  # the flash, written by the next run
    assert app.session_state["heat_layer"] is None
