"""Fine-tune page: win back the accuracy pruning cost, training the pruned model with its pruned filters held at zero."""

import os

import streamlit as st

from dashboard import cache, finetuning, jobs
from dashboard.cluster import show_where_finetunes_run
from dashboard.state import active_model, current_plan, plan_description, plan_error, plan_summary, require_entry
from fpgm_core import FpgmError, PlanError
from fpgm_core.training import DEFAULT_VAL_FRACTION, FineTuneSettings

DATA_LABELS = {"digits": "the digits' training split (1,347 images; measured on the 450 held-out)", "zip": "upload a zip of images"}
SCHEDULE_LABELS = {"fixed": "fixed masks", "per-epoch": "re-chosen by FPGM after every epoch (the paper's training)"}
ZIP_LAYOUT = (
    "Either `train/` and `val/` folders, each in ImageFolder layout (`train/CLASS/IMAGE.png`), or one ImageFolder "
    "that is split by class into training and held-out images with a seed. Class indices follow the Evaluate page's "
    "rules. Images without class folders are unlabelled: they train by distillation alone."
)
DEFAULTS = FineTuneSettings()


def page() -> None:
    st.title("Fine-tune")
    active = active_model()
    plan = current_plan()
    try:
        summary = plan_summary(active, plan)
    except PlanError as exc:
        plan_error(exc)
        return
    st.markdown(f"**{active.source.label()}** · plan {plan_description(plan)} · **{summary.pruned:,} filters** pruned")
    st.caption("Training runs on a copy of the pruned model: after every step the pruned filters, their bias and the "
               "BatchNorm channels they feed are set back to exactly zero, and their gradients never reach the optimizer.")
    onnx = active.loaded.onnx
    if onnx is not None and not onnx.converted:
        # The initializer view runs the graph in onnxruntime: no gradients reach the weights.
        st.warning(f"Fine-tuning needs the graph in PyTorch, and {onnx.filename} did not convert ({onnx.reason}). "
                   "The Export page still serves the masked ONNX graph.", icon=":material/block:")
        return
    if summary.pruned == 0:
        st.info("The plan prunes nothing, so there is nothing to win back: set a sparsity first.")
        st.page_link("pages/sparsity.py", label="Sparsity", icon=":material/tune:")
        return
    data, data_key = _choose_data(active)
    settings = _settings()
    # The button's callback asked for the job before this run: start it before drawing the button, so
    # that the button is already disabled while it runs.
    if jobs.requested(finetuning.JOB) and data is not None:
        scores = cache.scores_as_tensors(cache.all_layer_scores(active.model, active.key, plan.metric, active.device))
        key = finetuning.JobKey(finetuning.finetune_key(active, plan), data.source, data_key, settings)
        jobs.start(finetuning.JOB, key, "Fine-tuning", finetuning.training_work(active, plan, data, settings, scores))
    running = jobs.job(finetuning.JOB)
    busy = running is not None and running.running
    st.button("Start fine-tuning", key="ft_start", type="primary", on_click=jobs.request, args=(finetuning.JOB,),
              disabled=data is None or busy, icon=":material/play_arrow:")
    show_where_finetunes_run()
    if busy:
        jobs.watch(running, live=_live)
    _outcome(active, plan)
    kept = finetuning.current(active, plan)
    if kept is not None:
        _result(active, kept)


def _choose_data(active):
    """The training data and its key, or (None, None) with the reason on the page."""
    session = st.session_state
    options = (["digits"] if active.loaded.arch == "demo" else []) + ["zip"]
    if session.get("ft_data_kind") not in options:
        session.ft_data_kind = options[0]
    kind = st.radio("Train on", options, format_func=DATA_LABELS.get, key="ft_data_kind", horizontal=True)
    if kind == "digits":
        return finetuning.demo_training(), ("digits", 0)
    columns = st.columns([3, 1, 1], vertical_alignment="bottom")
    uploaded = columns[0].file_uploader("Images (.zip)", type=["zip"], key="ft_zip", help=ZIP_LAYOUT)
    session.setdefault("ft_val_fraction", DEFAULT_VAL_FRACTION)
    session.setdefault("ft_split_seed", 0)
    fraction = columns[1].number_input("Held out (one folder)", 0.05, 0.5, step=0.05, key="ft_val_fraction", persist_state="session")
    split_seed = columns[2].number_input("Split seed", 0, 10_000, key="ft_split_seed", persist_state="session")
    if uploaded is not None:
        content = uploaded.getvalue()
        previous = session.get("ft_upload")
        if previous is None or previous["file_id"] != uploaded.file_id:
            # Kept in the session, so that the images survive a visit to another page.
            session.ft_upload = {"file_id": uploaded.file_id, "name": uploaded.name,
                                 "digest": finetuning.upload_digest(content), "content": content}
    upload = session.get("ft_upload")
    if upload is None:
        st.info(ZIP_LAYOUT)
        return None, None
    try:
        data = finetuning.zip_training(upload["digest"], active.key, float(fraction), int(split_seed),
                                       upload["name"], active.loaded, upload["content"])
    except FpgmError as exc:
        st.error(f"{upload['name']}: {exc}")
        return None, None
    st.caption(data.source)
    return data, ("zip", upload["digest"], float(fraction), int(split_seed))


def _settings() -> FineTuneSettings:
    """The fine-tune settings the widgets describe."""
    session = st.session_state
    for key, value in {"ft_epochs": DEFAULTS.epochs, "ft_lr": DEFAULTS.lr, "ft_optimizer": DEFAULTS.optimizer,
                       "ft_schedule": DEFAULTS.schedule, "ft_regrow": False, "ft_ramp": 0, "ft_distill": False,
                       "ft_temperature": 4.0, "ft_distill_weight": DEFAULTS.distill_weight, "ft_group": True,
                       "ft_seed": 0}.items():
        session.setdefault(key, value)
    columns = st.columns(4, vertical_alignment="bottom")
    epochs = columns[0].number_input("Epochs", 1, 200, key="ft_epochs", persist_state="session")
    lr = columns[1].number_input("Learning rate (peak)", 1e-5, 1.0, step=1e-3, format="%.4f", key="ft_lr", persist_state="session")
    optimizer = columns[2].selectbox("Optimizer", ["adamw", "sgd"], format_func={"adamw": "AdamW", "sgd": "SGD (Nesterov)"}.get,
                                     key="ft_optimizer", persist_state="session")
    seed = columns[3].number_input("Seed", 0, 10_000, key="ft_seed", persist_state="session",
                                   help="Batch order and augmentation; the same seed gives the same weights on CPU.")
    schedule = st.radio("Masks", ["fixed", "per-epoch"], format_func=SCHEDULE_LABELS.get, key="ft_schedule", horizontal=True,
                        persist_state="session")
    session.ft_ramp = min(int(session.ft_ramp), int(epochs))
    columns = st.columns(4, vertical_alignment="bottom")
    regrow = columns[0].checkbox("Let pruned filters regrow", key="ft_regrow", persist_state="session", disabled=schedule == "fixed",
                                 help="Soft filter pruning: pruned filters keep training between re-selections instead of "
                                      "staying frozen at zero.")
    ramp = columns[1].number_input("Ramp over epochs", 0, int(epochs), key="ft_ramp", persist_state="session",
                                   disabled=schedule == "fixed", help="Grow the sparsity to the plan's over this many epochs.")
    group = columns[2].checkbox("Slimmable masks", key="ft_group", persist_state="session",
                                help="Layers added together (residual connections) lose the same channels, so the fine-tuned "
                                     "model can be exported physically smaller. The channels are chosen per dependency "
                                     "group, so the untrained pruned model differs from the Sparsity page's per-layer one.")
    distill = columns[3].checkbox("Distil from the unpruned model", key="ft_distill", persist_state="session")
    temperature, weight = DEFAULTS.distill_temperature, DEFAULTS.distill_weight
    if distill:
        columns = st.columns(4, vertical_alignment="bottom")
        temperature = columns[0].number_input("Temperature", 0.5, 20.0, step=0.5, key="ft_temperature", persist_state="session")
        weight = columns[1].slider("Distillation weight", 0.0, 1.0, step=0.05, key="ft_distill_weight", persist_state="session",
                                   help="1 = distillation alone: no labels needed.")
    fixed = schedule == "fixed"
    return FineTuneSettings(
        epochs=int(epochs), lr=float(lr), optimizer=optimizer, schedule=schedule, regrow=bool(regrow) and not fixed,
        ramp_epochs=0 if fixed else int(ramp), group_consistent=bool(group), seed=int(seed),
        distill_temperature=float(temperature) if distill else None, distill_weight=float(weight),
    )


def _live(job) -> None:
    _, _, records = job.snapshot()
    if records:
        epochs = job.key.settings.epochs
        st.plotly_chart(finetuning.history_figure(records, epochs), key="ft_live_chart", config={"displaylogo": False})


def _outcome(active, plan) -> None:
    """What became of the last fine-tune: kept (by :func:`finetuning.current`), stopped, failed or dropped."""
    finetuning.current(active, plan)  # takes over a finished fine-tune
    if st.session_state.pop("ft_dropped", False):
        st.warning("The model or the plan changed while it trained, so the result was dropped.")
    finished = jobs.finish(finetuning.JOB)
    if finished is None:
        return
    if finished.state == "stopped":
        _, _, records = finished.snapshot()
        done = max((r["epoch"] for r in records), default=0)
        st.info(f"Stopped after {done} epoch{'s' if done != 1 else ''}. Nothing was kept: the session's model, plan and any "
                "earlier fine-tuned model are as they were.")
    elif finished.state == "failed":
        st.error(f"Fine-tuning failed: {finished.error}")


def _result(active, kept) -> None:
    result = kept.result
    records = [{**r.to_dict(), "baseline_top1": result.baseline.top1 if result.baseline.top1 == result.baseline.top1 else None}
               for r in result.history]
    st.subheader("The session's fine-tuned model")
    cells = st.columns(4)
    baseline = records[0]["baseline_top1"]
    final, untrained = result.final, result.untrained
    if final.top1 is not None:
        cells[0].metric("Held-out top-1, fine-tuned", f"{final.top1:.1%}",
                        f"{100 * (final.top1 - untrained.top1):+.1f} points vs not trained", delta_color="normal")
        cells[1].metric("Pruned, not trained", f"{untrained.top1:.1%}")
        cells[2].metric("Unpruned", f"{baseline:.1%}" if baseline is not None else "—")
    cells[3].metric("Agreement with the unpruned", f"{final.agreement:.1%}")
    st.plotly_chart(finetuning.history_figure(records, result.settings.epochs), key="ft_result_chart",
                    config={"displaylogo": False})
    with st.expander("Per epoch"):
        st.dataframe(finetuning.history_table(records), width="stretch")
    ran_on = result.extra.get("ran_on") or {}
    elsewhere = f" of {ran_on['host']} (a cluster worker)" if ran_on and ran_on.get("pid") != os.getpid() else ""
    st.caption(f"{result.settings.epochs} epochs on {kept.data_source} · {result.seconds:.1f} s on {result.device}{elsewhere}"
               f"{f' ({result.amp} mixed precision)' if result.amp else ''} · {result.threads} torch threads. Kept for this "
               "session until the model or the plan changes.")
    links = st.columns(3)
    links[0].page_link("pages/export.py", label="Export it", icon=":material/download:")
    links[1].page_link("pages/evaluate.py", label="Evaluate it", icon=":material/fact_check:")


require_entry(__file__)
page()
