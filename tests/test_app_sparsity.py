"""AppTest: the Sparsity page — global slider, per-layer overrides, ranking mode, metric, live summary."""

from __future__ import annotations

import pytest

import fpgm_core
from dashboard.summary import apply_editor_edits

SPARSITY = "pages/sparsity.py"


def table(app):
    return app.data_editor[0].value


def pruned(app) -> dict[str, int]:
    frame = table(app)
    return {str(name): int(count) for name, count in frame["pruned"].items()}


def metric_values(app) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def edit(app, row: int, value) -> None:
    """Type ``value`` into the override cell of ``row``, as the data editor reports it."""
    key = app.data_editor[0].key
    app.session_state[key] = {"edited_rows": {row: {"override": value}}, "added_rows": [], "deleted_rows": []}
    app.run()


def demo():
    model = fpgm_core.build_model("demo", "default").model
    return model, fpgm_core.prunable_layers(model)


def test_global_slider_changes_the_pruned_counts(new_app):
    app = new_app(SPARSITY)
    _, layers = demo()
    assert pruned(app) == {layer.name: (round(0.3 * layer.filters) if not layer.is_output else 0) for layer in layers}
    before = metric_values(app)
    app.slider(key="sparsity_pct").set_value(60).run()
    assert not app.exception
    assert pruned(app) == {layer.name: (round(0.6 * layer.filters) if not layer.is_output else 0) for layer in layers}
    after = metric_values(app)
    assert after["Filters pruned"] != before["Filters pruned"]
    assert after["Parameters"] != before["Parameters"] and after["FLOPs / forward"] != before["FLOPs / forward"]
    assert after["Filters pruned"].startswith(f"{sum(pruned(app).values())} of ")


def test_summary_matches_the_engine(new_app):
    app = new_app(SPARSITY)
    model, _ = demo()
    masks = fpgm_core.plan_masks(model, fpgm_core.SparsityPlan(sparsity=0.3), device="cpu")
    costs = fpgm_core.estimate_pruned_costs(model, masks, (1, 1, 8, 8))
    from dashboard.summary import format_count

    values = metric_values(app)
    assert values["Parameters"] == f"{format_count(costs.params_before)} → {format_count(costs.params_after)}"
    assert values["FLOPs / forward"] == f"{format_count(costs.flops_before)} → {format_count(costs.flops_after)}"


def test_overriding_one_layer(new_app):
    app = new_app(SPARSITY)
    edit(app, 0, 0.75)  # conv1, 16 filters
    assert app.session_state["workspace"].overrides == {"conv1": 0.75}
    counts = pruned(app)
    assert counts["conv1"] == 12
    assert counts["layer1.conv1"] == 5  # the others still follow the 30% plan
    frame = table(app)
    assert frame.loc["conv1", "rule"] == "override" and frame.loc["conv1", "override"] == 0.75
    # Survives a page switch; clearing the cell removes it; the button clears all.
    app.switch_page("pages/heatmaps.py").run()
    app.switch_page(SPARSITY).run()
    assert pruned(app)["conv1"] == 12
    edit(app, 0, None)
    assert app.session_state["workspace"].overrides == {}
    edit(app, 3, 0.5)
    assert pruned(app)["down"] == 16
    next(button for button in app.button if button.label == "Clear overrides").click().run()
    assert app.session_state["workspace"].overrides == {} and pruned(app)["down"] == 10


def test_overriding_the_output_layer_includes_it(new_app):
    app = new_app(SPARSITY)
    edit(app, 6, 0.2)  # fc, the classifier: left out of plans unless overridden
    assert pruned(app)["fc"] == 2


def test_global_ranking_mode_uses_the_engine_counts(new_app):
    app = new_app(SPARSITY)
    app.radio(key="mode").set_value("global").run()
    app.slider(key="max_layer_pct").set_value(50).run()
    model, layers = demo()
    scores = fpgm_core.layer_scores(model, "l2", device="cpu")
    plan = fpgm_core.SparsityPlan(sparsity=0.3, mode="global", max_layer_sparsity=0.5)
    expected = fpgm_core.plan_counts(layers, plan, scores)
    counts = pruned(app)
    assert {name: counts[name] for name in expected} == expected
    assert sum(expected.values()) == round(0.3 * sum(layer.filters for layer in layers if not layer.is_output))
    assert all(counts[layer.name] <= 0.5 * layer.filters for layer in layers)


@pytest.mark.parametrize("metric", ["l1", "cosine"])
def test_switching_metric_in_global_mode(new_app, metric):
    app = new_app(SPARSITY)
    app.radio(key="mode").set_value("global").run()
    app.radio(key="metric").set_value(metric).run()
    assert not app.exception
    model, layers = demo()
    scores = fpgm_core.layer_scores(model, metric, device="cpu")
    expected = fpgm_core.plan_counts(layers, fpgm_core.SparsityPlan(sparsity=0.3, mode="global", metric=metric), scores)
    counts = pruned(app)
    assert {name: counts[name] for name in expected} == expected
    assert app.session_state["metric"] == metric


def test_include_output_toggle(new_app):
    app = new_app(SPARSITY)
    assert pruned(app)["fc"] == 0
    app.toggle(key="include_output").set_value(True).run()
    assert pruned(app)["fc"] == 3


def test_editor_edits_fold_in_idempotently():
    names = ["a", "b", "c"]
    edits = {"edited_rows": {"0": {"override": 0.5}, 2: {"override": 1.7}, 1: {"type": "x"}}}
    once = apply_editor_edits({"b": 0.2}, names, edits)
    assert once == {"a": 0.5, "b": 0.2, "c": 1.0}
    assert apply_editor_edits(once, names, edits) == once
    assert apply_editor_edits(once, names, {"edited_rows": {0: {"override": float("nan")}}}) == {"b": 0.2, "c": 1.0}
    assert apply_editor_edits(once, names, None) == once
    assert apply_editor_edits({}, names, {"edited_rows": {9: {"override": 0.1}}}) == {}


def test_shared_controls_carry_across_pages(new_app):
    app = new_app("pages/heatmaps.py")
    app.slider(key="sparsity_pct").set_value(50)
    app.radio(key="metric").set_value("cosine").run()
    app.switch_page(SPARSITY).run()
    assert app.slider(key="sparsity_pct").value == 50
    assert app.radio(key="metric").value == "cosine"
    assert pruned(app)["conv1"] == 8
    app.slider(key="sparsity_pct").set_value(25).run()
    app.switch_page("pages/heatmaps.py").run()
    assert app.slider(key="sparsity_pct").value == 25


def test_dependency_groups_expander_lists_the_groups(new_app):
    app = new_app(SPARSITY)
    assert not app.exception, app.exception
    expander = next(e for e in app.expander if e.label == "Coupled layers (dependency groups)")
    groups = expander.dataframe[0].value
    assert list(groups.columns) == ["root", "layers", "channels", "blocked_by", "reason"]
    # Row for row the engine's groups of the demo model (its residual adds tie several convs).
    from fpgm_core.groups import dependency_groups

    model = fpgm_core.build_model("demo", "default").model
    expected = [group.to_dict() for group in dependency_groups(model, (1, 1, 8, 8))]
    assert any(len(group["layers"]) > 1 for group in expected)
    shown = groups.fillna("").to_dict("records")
    assert shown == [
        {"root": g["root"], "layers": ", ".join(g["layers"]), "channels": g["channels"],
         "blocked_by": g["blocked_by"] or "", "reason": g["reason"] or ""}
        for g in expected
    ]
