"""Evaluate page: how accurate the pruned model still is — the current plan, accuracy against
sparsity for FPGM, norm and random pruning, and per-layer sensitivity with a plan that fits a budget."""

import hashlib

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import finetuning, jobs
from dashboard.cluster import job_executor, show_where_jobs_run
from dashboard.state import active_model, current_plan, load_plan, plan_description, plan_error, plan_summary, require_entry
from fpgm_core import METRICS, FpgmError, PlanError
from fpgm_core.criteria import CRITERIA, CRITERION_LABELS
from fpgm_core.execution import INLINE
from fpgm_core.evaluation import (
    demo_data,
    evaluate_masks,
    evaluate_model,
    image_transform,
    load_image_zip,
    model_categories,
    predict,
)
from fpgm_core.sensitivity import layer_sensitivity, sparsity_sweep, suggest_plan, sweep_summary
from fpgm_core.training import SWEEP_CRITERIA, FineTuneSettings, finetuned_summary, finetuned_sweep

DATA_LABELS = {"digits": "held-out digits (450 images the demo never trained on)", "zip": "upload a zip of images"}
CRITERION_COLORS = {"fpgm-l2": "#1f77b4", "fpgm-l1": "#17becf", "norm-l1": "#ff7f0e", "norm-l2": "#d62728", "random": "#7f7f7f"}
MEASURES = {"top1": "top-1 accuracy", "agreement": "agreement with the unpruned model"}
ZIP_RULES = (
    "Lay the zip out as `CLASS/IMAGE.png` (ImageFolder). Class indices: folders named by numbers (`0/`, `207/`) "
    "are those indices; folders named by the weights' category names (`goldfish/`) get that category's index; "
    "otherwise the folder names *sorted* are indices 0, 1, 2, … Images get the architecture's torchvision "
    "transforms (the demo: 8×8 greyscale, light digit on dark)."
)


@st.cache_resource(max_entries=1, show_spinner="Loading the held-out digits…")
def _digits():
    return demo_data()


@st.cache_resource(max_entries=2, show_spinner="Reading the images…")
def _zip_data(digest: str, model_key, _loaded, _content: bytes):
    # Keyed by the model too: ONNX graphs and your own models take the transforms of their own input shape.
    transform = image_transform(_loaded.arch, model=_loaded.model, input_shape=tuple(_loaded.input_shape))
    return load_image_zip(_content, transform, categories=model_categories(_loaded.arch, model=_loaded.model))


@st.cache_resource(max_entries=8, show_spinner="Running the unpruned model on the images…")
def _reference(_model, model_key, _data, data_key):
    # Never modified by the callers: every evaluation compares against it.
    return predict(_model, _data.images)


def page() -> None:
    st.title("Evaluate")
    active = active_model()
    data, data_key = _choose_data(active)
    if data is None:
        return
    try:
        reference = _reference(active.model, active.key, data, data_key)
        baseline = evaluate_masks(active.model, {}, data, reference=reference)
    except FpgmError as exc:
        st.error(f"These images cannot be evaluated with this model: {exc}")
        return
    _current_plan(active, data, data_key, reference, baseline)
    show_where_jobs_run()
    sweep_tab, finetuned_tab, sensitivity_tab = st.tabs(["Accuracy vs sparsity", "After fine-tuning", "Sensitivity per layer"])
    with sweep_tab:
        _sweep(active, data, data_key, reference, baseline)
    with finetuned_tab:
        _finetuned_sweep(active)
    with sensitivity_tab:
        _sensitivity(active, data, data_key, reference)


def _choose_data(active):
    """The images to evaluate on and their cache key, or (None, None) with a message."""
    session = st.session_state
    options = (["digits"] if active.loaded.arch == "demo" else []) + ["zip"]
    if session.get("eval_data_kind") not in options:
        session.eval_data_kind = options[0]
    kind = st.radio("Images", options, format_func=DATA_LABELS.get, key="eval_data_kind", horizontal=True)
    if kind == "digits":
        data = _digits()
        st.caption(f"{data.n} images · {data.source}")
        return data, ("digits", 0)
    uploaded = st.file_uploader("Images (.zip, ImageFolder layout)", type=["zip"], key="eval_zip", help=ZIP_RULES)
    if uploaded is not None:
        content = uploaded.getvalue()
        previous = session.get("eval_upload")
        if previous is None or previous["file_id"] != uploaded.file_id:
            # Kept in the session so that the images survive a visit to another page.
            session.eval_upload = {"file_id": uploaded.file_id, "name": uploaded.name,
                                   "digest": hashlib.sha256(content).hexdigest(), "content": content}
    upload = session.get("eval_upload")
    if upload is None:
        st.info(ZIP_RULES)
        return None, None
    arch = active.loaded.arch
    try:
        data = _zip_data(upload["digest"], active.key, active.loaded, upload["content"])
    except FpgmError as exc:
        st.error(f"{upload['name']}: {exc}")
        return None, None
    st.caption(f"{upload['name']} · {data.source} · transforms of {arch}")
    return data, ("zip", upload["digest"], arch)


def _current_plan(active, data, data_key, reference, baseline) -> None:
    plan = current_plan()
    try:
        summary = plan_summary(active, plan)
    except PlanError as exc:
        plan_error(exc)
        return
    key = ("plan", active.key, data_key, plan.sparsity, plan.metric, tuple(sorted(plan.overrides.items())), plan.mode,
           plan.max_layer_sparsity, plan.include_output)
    result = jobs.results().get(key)
    if result is None:
        with st.spinner("Evaluating the current plan…"):
            result = evaluate_masks(active.model, summary.masks, data, reference=reference)
        jobs.results().put(key, result)
    st.markdown(f"**Current plan** · {plan_description(plan)} · {summary.pruned:,} filters pruned")
    cells = st.columns(4)
    cells[0].metric("Top-1", f"{result.top1:.1%}", f"{100 * (result.top1 - baseline.top1):+.1f} points vs {baseline.top1:.1%}",
                    delta_color="normal" if result.top1 < baseline.top1 else "off")
    cells[1].metric("Agreement", f"{result.agreement:.1%}", help="Images whose predicted class is unchanged by pruning (needs no labels).")
    cells[2].metric("KL(original ‖ pruned)", f"{result.kl:.3f}", help="Mean KL divergence between the softmax outputs; 0 = identical.")
    cells[3].metric("FLOPs removed", f"{summary.costs.flops_removed:.1%}", help="Estimated, as on the Sparsity page.")
    kept = finetuning.current(active, plan)
    if kept is None:
        st.caption(f"On {result.n} images. The pruned filters output zero; nothing is fine-tuned (the Fine-tune page "
                   "trains the pruned model back).")
        return
    key = ("finetuned", kept.fingerprint, data_key)
    tuned = jobs.results().get(key)
    if tuned is None:
        with st.spinner("Evaluating the fine-tuned model…"):
            tuned = evaluate_model(kept.result.model, data, reference=reference)
        jobs.results().put(key, tuned)
    st.markdown(f"**Fine-tuned** · {kept.result.settings.epochs} epochs on {kept.data_source}")
    cells = st.columns(4)
    cells[0].metric("Top-1 (fine-tuned)", f"{tuned.top1:.1%}", f"{100 * (tuned.top1 - baseline.top1):+.1f} points vs unpruned",
                    delta_color="normal" if tuned.top1 < baseline.top1 else "off")
    cells[1].metric("Agreement (fine-tuned)", f"{tuned.agreement:.1%}")
    cells[2].metric("KL (fine-tuned)", f"{tuned.kl:.3f}")
    trained_on = "" if data_key[0] != "digits" else " It never trained on these held-out digits."
    st.caption(f"On the same {result.n} images as the row above. Fine-tuned from this plan's pruned model; its pruned "
               f"filters are still exactly zero.{trained_on}")


def _sweep(active, data, data_key, reference, baseline) -> None:
    session = st.session_state
    session.setdefault("eval_criteria", list(CRITERIA))
    session.setdefault("eval_seeds", 5)
    session.setdefault("eval_measure", "top1")
    controls = st.columns([4, 1, 2], gap="medium", vertical_alignment="bottom")
    criteria = controls[0].multiselect("Criteria", CRITERIA, format_func=CRITERION_LABELS.get, key="eval_criteria",
                                       persist_state="session")
    seeds = controls[1].number_input("Random seeds", 1, 20, key="eval_seeds", persist_state="session",
                                     disabled="random" not in criteria, help="Random pruning runs once per seed: mean and spread.")
    controls[2].button("Run the sweep", key="eval_run_sweep", type="primary", on_click=jobs.request, args=("eval_sweep",),
                       disabled=not criteria, icon=":material/play_arrow:")
    st.caption("Global sparsity s prunes round(s·N) filters in every layer but the output layer; every criterion removes the "
               "same number per layer and only chooses different filters.")
    chosen = [c for c in CRITERIA if c in criteria]
    key = ("sweep", active.key, data_key, tuple(chosen), int(seeds) if "random" in chosen else 0)
    points = jobs.run("eval_sweep", key, "Sweeping sparsity", lambda progress, stop: sparsity_sweep(
        active.model, data, criteria=chosen, seeds=range(int(seeds)), reference=reference, progress=progress,
        should_stop=stop, device=active.device, executor=job_executor()))
    if not points:
        st.caption("Run the sweep to see accuracy against sparsity for each criterion.")
        return
    rows = pd.DataFrame(sweep_summary(points))
    measure = st.radio("Show", list(MEASURES), format_func=MEASURES.get, key="eval_measure", horizontal=True,
                       persist_state="session")
    st.plotly_chart(_sweep_figure(rows, measure, baseline.top1), key="eval_sweep_chart", config={"displaylogo": False})
    table = rows.pivot(index="sparsity", columns="criterion", values=measure)[chosen].rename(columns=CRITERION_LABELS)
    table.index = [f"{s:.0%}" for s in table.index]
    st.dataframe(table, width="stretch", column_config={
        column: st.column_config.NumberColumn(column, format="percent") for column in table.columns})


def _finetuned_sweep(active) -> None:
    """The teaching sweep after training: every criterion at a few sparsities, each point fine-tuned the same way."""
    session = st.session_state
    data, data_key = finetuning.session_training_data(active)
    if data is None:
        st.info("Fine-tuning needs training images: upload a zip on the Fine-tune page (the demo model trains on the "
                "digits' training split).")
        st.page_link("pages/finetune.py", label="Fine-tune", icon=":material/trending_up:")
        return
    session.setdefault("eval_ft_criteria", list(SWEEP_CRITERIA))
    session.setdefault("eval_ft_sparsities", [30, 50, 70])
    session.setdefault("eval_ft_seeds", 2)
    session.setdefault("eval_ft_epochs", 3)
    controls = st.columns([3, 3, 1, 1, 2], gap="medium", vertical_alignment="bottom")
    criteria = controls[0].multiselect("Criteria", CRITERIA, format_func=CRITERION_LABELS.get, key="eval_ft_criteria",
                                       persist_state="session")
    sparsities = controls[1].multiselect("Sparsities", list(range(10, 100, 10)), format_func=lambda s: f"{s}%",
                                         key="eval_ft_sparsities", persist_state="session")
    seeds = controls[2].number_input("Seeds", 1, 10, key="eval_ft_seeds", persist_state="session",
                                     help="Each point is fine-tuned once per seed (batch order; for random also the draw).")
    epochs = controls[3].number_input("Epochs", 1, 50, key="eval_ft_epochs", persist_state="session")
    controls[4].button("Run the sweep", key="eval_run_ft_sweep", type="primary", on_click=jobs.request,
                       args=("eval_ft_sweep",), disabled=not criteria or not sparsities, icon=":material/play_arrow:")
    chosen = [c for c in CRITERIA if c in criteria]
    levels = sorted(s / 100 for s in sparsities)
    settings = FineTuneSettings(epochs=int(epochs))
    runs = len(chosen) * len(levels) * int(seeds)
    st.caption(f"{runs} fine-tunes of {int(epochs)} epoch{'s' if epochs != 1 else ''} each on {data.source}, with the "
               f"Fine-tune page's defaults (AdamW, peak learning rate {settings.lr:g}, fixed masks). Every criterion prunes "
               "the same number of filters per layer; only which filters differs.")
    key = ("finetuned_sweep", active.key, data_key, tuple(chosen), tuple(levels), int(seeds), settings)
    points = jobs.run("eval_ft_sweep", key, "Pruning and fine-tuning", lambda progress, stop: _run_finetuned_sweep(
        active, data, settings, levels, chosen, int(seeds), progress, stop))
    if not points:
        st.caption("Run it to see what each criterion costs right after pruning and what training wins back.")
        return
    rows = finetuned_summary(points)
    st.plotly_chart(finetuning.sweep_figure(rows, CRITERION_COLORS), key="eval_ft_sweep_chart", config={"displaylogo": False})
    st.dataframe(finetuning.sweep_table(rows), width="stretch", hide_index=True)


def _run_finetuned_sweep(active, data, settings, levels, chosen, seeds, progress, stop):
    executor = job_executor()
    # The cluster's workers train on their CPUs (the server's GPU is not theirs).
    device = active.device if executor is INLINE else "cpu"
    return finetuned_sweep(active.model, data, settings, sparsities=levels, criteria=chosen, seeds=range(seeds), device=device,
                           progress=progress, should_stop=stop, executor=executor)


def _sweep_figure(rows: pd.DataFrame, measure: str, baseline: float) -> go.Figure:
    """One line per criterion against sparsity; random's band spans its seeds' min to max."""
    fig = go.Figure()
    for criterion in dict.fromkeys(rows["criterion"]):
        part = rows[rows["criterion"] == criterion].sort_values("sparsity")
        color = CRITERION_COLORS.get(criterion, "#444")
        if part["runs"].max() > 1:
            fig.add_trace(go.Scatter(
                x=list(part["sparsity"]) + list(part["sparsity"])[::-1],
                y=list(part[f"{measure}_max"]) + list(part[f"{measure}_min"])[::-1],
                fill="toself", fillcolor=color, opacity=0.18, line=dict(width=0), hoverinfo="skip", showlegend=False,
            ))
        runs = int(part["runs"].max())
        name = CRITERION_LABELS.get(criterion, criterion) + (f" (mean of {runs})" if runs > 1 else "")
        fig.add_trace(go.Scatter(
            x=part["sparsity"], y=part[measure], mode="lines+markers", name=name, line=dict(color=color, width=2.5),
            customdata=part[["flops_removed", f"{measure}_min", f"{measure}_max"]].to_numpy(),
            hovertemplate="sparsity %{x:.0%}<br>%{y:.1%} (min %{customdata[1]:.1%}, max %{customdata[2]:.1%})"
                          "<br>FLOPs removed %{customdata[0]:.0%}<extra>" + name + "</extra>",
        ))
    if measure == "top1":
        fig.add_hline(y=baseline, line_dash="dot", line_color="#444", annotation_text="unpruned", annotation_position="top right")
    fig.update_layout(
        height=420, margin=dict(l=10, r=10, t=30, b=40), legend=dict(orientation="h", y=1.12, x=0),
        xaxis=dict(title="global sparsity (filters pruned per layer)", tickformat=".0%"),
        yaxis=dict(title=MEASURES[measure], tickformat=".0%", range=[0, 1.03]),
    )
    return fig


def _sensitivity(active, data, data_key, reference) -> None:
    session = st.session_state
    session.setdefault("eval_sens_metric", "l2")
    session.setdefault("eval_budget", 1.0)
    controls = st.columns([3, 2], gap="medium", vertical_alignment="bottom")
    metric = controls[0].radio("FPGM metric", METRICS, key="eval_sens_metric", horizontal=True, persist_state="session")
    controls[1].button("Run the sensitivity analysis", key="eval_run_sensitivity", type="primary", on_click=jobs.request,
                       args=("eval_sensitivity",), icon=":material/play_arrow:")
    st.caption("Each layer is pruned alone at 10 % … 90 % (FPGM), the others untouched: the layers whose accuracy falls "
               "first are the ones to spare.")
    key = ("sensitivity", active.key, data_key, metric)
    sensitivity = jobs.run("eval_sensitivity", key, "Pruning one layer at a time", lambda progress, stop: layer_sensitivity(
        active.model, data, metric=metric, reference=reference, progress=progress, should_stop=stop, device=active.device,
        executor=job_executor()))
    if sensitivity is None:
        st.caption("Run the analysis to see each layer's accuracy curve and get a plan within an accuracy budget.")
        return
    st.plotly_chart(_sensitivity_figure(sensitivity), key="eval_sensitivity_chart", config={"displaylogo": False})
    drops = pd.DataFrame([{"layer": p.layer, "sparsity": f"{p.sparsity:.0%}", "drop": 100 * p.drop} for p in sensitivity.points])
    table = drops.pivot(index="layer", columns="sparsity", values="drop").loc[sensitivity.layers()]
    with st.expander("Top-1 drop in points, per layer and sparsity"):
        st.dataframe(table, width="stretch", column_config={
            column: st.column_config.NumberColumn(column, format="%.1f") for column in table.columns})

    st.markdown("**A plan within an accuracy budget**")
    controls = st.columns([2, 2, 3], gap="medium", vertical_alignment="bottom")
    budget = controls[0].number_input("Largest top-1 drop (points)", 0.0, 100.0, step=0.5, key="eval_budget",
                                      persist_state="session")
    controls[1].button("Suggest a plan", key="eval_run_suggest", on_click=jobs.request, args=("eval_suggest",), icon=":material/auto_fix_high:")
    suggestion = jobs.run("eval_suggest", key + (float(budget),), "Verifying candidate plans", lambda progress, stop: suggest_plan(
        active.model, data, sensitivity, float(budget) / 100, reference=reference, progress=progress, should_stop=stop,
        device=active.device, executor=job_executor()))
    if suggestion is None:
        st.caption("Per layer, the largest sparsity whose drop fits, then verified together on the images and backed off or "
                   "raised a step at a time, keeping the plan that removes the most FLOPs.")
        return
    cells = st.columns(4)
    cells[0].metric("Verified top-1", f"{suggestion.result.top1:.1%}", f"{-100 * suggestion.drop:+.1f} points", delta_color="off")
    cells[1].metric("FLOPs removed", f"{suggestion.flops_removed:.1%}")
    cells[2].metric("Parameters removed", f"{suggestion.params_removed:.1%}")
    cells[3].metric("Plans evaluated", suggestion.evaluations)
    if suggestion.overrides:
        st.dataframe(pd.DataFrame({"sparsity": suggestion.overrides}), width="content",
                     column_config={"sparsity": st.column_config.NumberColumn("sparsity", format="percent")})
    else:
        st.warning("No layer can be pruned within this budget; try a larger one.")
    st.caption("Verified on the same images it was chosen on: on new images the drop may differ.")
    # The plan is loaded by the click's callback, before this run draws anything; then the page opens.
    if st.button("Load into the Sparsity page", key="eval_load_plan", type="primary", disabled=not suggestion.overrides,
                 icon=":material/tune:", on_click=load_plan, args=(dict(suggestion.overrides), suggestion.metric)):
        st.switch_page("pages/sparsity.py")


def _sensitivity_figure(sensitivity) -> go.Figure:
    fig = go.Figure()
    for layer in sensitivity.layers():
        curve = sensitivity.curve(layer)
        fig.add_trace(go.Scatter(
            x=[0.0] + [p.sparsity for p in curve], y=[sensitivity.baseline_top1] + [p.top1 for p in curve],
            mode="lines+markers", name=layer, customdata=[[0, 0]] + [[p.pruned, p.filters] for p in curve],
            hovertemplate=f"{layer}<br>sparsity %{{x:.0%}} (%{{customdata[0]}} of %{{customdata[1]}} filters)"
                          "<br>top-1 %{y:.1%}<extra></extra>",
        ))
    fig.update_layout(
        height=420, margin=dict(l=10, r=10, t=30, b=40), legend=dict(title="layer pruned alone"),
        xaxis=dict(title="sparsity of that layer", tickformat=".0%"),
        yaxis=dict(title="top-1 accuracy", tickformat=".0%", range=[0, 1.03]),
    )
    return fig


require_entry(__file__)
page()
