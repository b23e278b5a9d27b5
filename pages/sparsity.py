"""Sparsity page: the global sparsity, per-layer overrides, ranking mode and metric, with a live summary."""

import pandas as pd
import streamlit as st

from dashboard import slimming
from dashboard.figures import sparsity_figure
from dashboard.state import (
    METRIC_LABELS,
    MODE_LABELS,
    SPARSITY_RANGE,
    active_model,
    clear_overrides,
    current_plan,
    editor_key,
    fold_editor_edits,
    plan_error,
    plan_summary,
    require_entry,
    workspace,
)
from dashboard.summary import PlanSummary, format_count, layer_table
from fpgm_core import METRICS, FpgmError, PlanError


def page() -> None:
    st.title("Sparsity")
    active = active_model()
    _controls()
    if fold_editor_edits([layer.name for layer in active.layers], workspace().editor_generation):
        st.rerun()  # a table edit whose callback Streamlit stopped midway: the sidebar must show it too
    plan = current_plan()
    try:
        summary = plan_summary(active, plan)
    except PlanError as exc:
        plan_error(exc)
        return
    if summary.tracing_note:
        st.warning(f"{summary.tracing_note[0].upper()}{summary.tracing_note[1:]}.", icon=":material/account_tree:")
    _metrics(active, summary)
    table = layer_table(active.layers, summary.counts, plan.overrides)
    left, right = st.columns([3, 2], gap="large")
    with left:
        _editor(table)
    with right:
        st.markdown("**Sparsity per layer**")
        st.plotly_chart(sparsity_figure(table), key="sparsity_chart", config={"displaylogo": False})
    _groups(active)


def _groups(active) -> None:
    """Which layers lose the same channels in a slimmed model, and which groups are kept whole."""
    with st.expander("Coupled layers (dependency groups)", key="groups_expander"):
        st.caption("A slimmed model removes channels, not just zeroes them: layers whose outputs are added or "
                   "concatenated lose the same channels together (their FPGM scores are combined), and a group "
                   "a layer blocks is kept whole. The masked checkpoint is not affected.")
        try:
            groups = slimming.model_groups(active.model, active.key, tuple(active.loaded.input_shape))
        except FpgmError as exc:
            st.info(f"No dependency groups for this model: {exc}")
            return
        st.dataframe(slimming.groups_table(groups), width="stretch", hide_index=True, key="groups_table")


def _controls() -> None:
    top = st.columns([3, 2, 2], gap="large")
    top[0].slider("Global sparsity", **SPARSITY_RANGE, format="%d%%", key="sparsity_pct", persist_state="session",
                  help="Fraction of filters pruned in every layer (uniform), or over all layers together (global).")
    top[1].radio("Mode", list(MODE_LABELS), format_func=MODE_LABELS.get, key="mode", persist_state="session",
                 help="Uniform: each layer loses the same fraction, exactly as PyTorch's FPGMPruner. Global: filters "
                      "of all layers compete on scores normalised by their layer's mean.")
    top[2].radio("Metric", METRICS, format_func=METRIC_LABELS.get, horizontal=True, key="metric", persist_state="session")
    below = st.columns([3, 4], gap="large")
    below[0].slider("Per-layer cap (global mode)", 5, 100, format="%d%%", key="max_layer_pct", persist_state="session",
                    disabled=st.session_state.mode != "global",
                    help="In global mode no layer loses more than this fraction of its filters.")
    below[1].toggle("Prune the output layer too", key="include_output", persist_state="session",
                    help="The classifier is left out unless included here or overridden: pruning it removes classes.")


def _metrics(active, summary: PlanSummary) -> None:
    costs = summary.costs
    total = sum(layer.filters for layer in active.layers)
    cells = st.columns(3)
    cells[0].metric("Filters pruned", f"{summary.pruned:,} of {total:,}", f"{summary.pruned / total:.1%} of all filters",
                    delta_color="off", delta_arrow="off")
    cells[1].metric("Parameters", f"{format_count(costs.params_before)} → {format_count(costs.params_after)}",
                    f"-{costs.params_removed:.1%}", delta_color="inverse")
    cells[2].metric("FLOPs / forward", f"{format_count(costs.flops_before)} → {format_count(costs.flops_after)}",
                    f"-{costs.flops_removed:.1%}", delta_color="inverse",
                    help="Estimated: each layer keeps the fraction of output channels its mask keeps, times the input "
                         "channels kept by the layer feeding it directly.")


def _editor(table: pd.DataFrame) -> None:
    """The per-layer table; only *override* is editable, the rest is the live result.

    An edit becomes an override in the editor's callback, before the rerun that it starts, so the
    sidebar's plan line (drawn before this page) already shows it.
    """
    st.markdown("**Per layer** · type a sparsity (0–1) in *override* to fix a layer; clear it to follow the plan.")
    generation = workspace().editor_generation
    st.data_editor(
        table, key=editor_key(generation), on_change=fold_editor_edits, args=(list(table.index), generation), num_rows="fixed", width="stretch", height=min(38 + 35 * len(table), 560),
        disabled=["type", "filters", "pruned", "kept", "sparsity", "rule"], placeholder="—",
        column_order=["filters", "override", "pruned", "sparsity", "rule"],
        column_config={
            "_index": st.column_config.TextColumn("layer", disabled=True),
            "filters": st.column_config.NumberColumn("filters", width="small"),
            "override": st.column_config.NumberColumn(
                "override", min_value=0.0, max_value=1.0, step=0.01, format="%.2f", width=90,
                help="This layer's own sparsity; empty = follow the plan.",
            ),
            "pruned": st.column_config.NumberColumn("pruned", width="small"),
            "sparsity": st.column_config.ProgressColumn("sparsity", min_value=0.0, max_value=1.0, format="percent"),
            "rule": st.column_config.TextColumn("set by", width="small"),
        },
    )
    st.button("Clear overrides", on_click=clear_overrides, disabled=not workspace().override_items)


require_entry(__file__)
page()
