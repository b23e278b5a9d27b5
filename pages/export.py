"""Export page: download the masked checkpoint, its masks and recipe; the code that loads and reproduces it."""

from functools import partial
from typing import Callable

import streamlit as st

from dashboard import cache, exports, finetuning, slimming
from dashboard.state import (
    ActiveModel,
    active_model,
    current_plan,
    plan_description,
    plan_error,
    plan_summary,
    require_entry,
)
from fpgm_core import ExportError, PlanError, SparsityPlan
from fpgm_core.slim import PT_PICKLE_NOTE, SlimError


def page() -> None:
    st.title("Export")
    active = active_model()
    plan = current_plan()
    try:
        summary = plan_summary(active, plan)
    except PlanError as exc:
        plan_error(exc)
        return
    if summary.tracing_note:
        st.warning(f"{summary.tracing_note[0].upper()}{summary.tracing_note[1:]}.", icon=":material/account_tree:")
    loaded, source = active.loaded, active.source
    stem = exports.export_stem(loaded)
    total = sum(layer.filters for layer in active.layers)
    st.markdown(f"**{source.label()}** · plan {plan_description(plan)} · **{summary.pruned:,} of {total:,} filters** pruned")
    onnx = loaded.onnx
    if onnx is None:
        st.caption("The checkpoint is the full architecture's state_dict with the pruned filters (and their BatchNorm "
                   "channels) set to exactly zero, so it loads with `strict=True` into the unmodified model.")
    else:
        st.caption("The masked model is your ONNX file with the pruned filters (and the scale and bias of a "
                   "BatchNormalization right after them) set to exactly zero; everything else in the graph is kept. "
                   "Before it is served it runs in onnxruntime, and every pruned channel must come out exactly zero.")
        if onnx.analysis.folded is not None:
            st.warning(onnx.analysis.folded.message() + ".", icon=":material/warning:")
    if finetuning.current(active, plan) is not None:
        st.info("These files are pruned and not trained. This session's **fine-tuned** model is further down, under "
                "*Fine-tuned model*.", icon=":material/trending_up:")
    columns = st.columns(3, gap="large")
    with columns[0]:
        st.markdown("**Masked checkpoint**" if onnx is None else "**Masked ONNX graph**")
        if onnx is None:
            for fmt in ("safetensors", "pt"):
                _download(f"{stem}.{fmt}", partial(exports.checkpoint_bytes, loaded, summary.masks, fmt),
                          f"download_checkpoint_{fmt}", when_clicked=True)
        else:
            _download(f"{stem}.onnx", partial(exports.onnx_bytes, loaded, summary.masks), "download_onnx", when_clicked=True)
    with columns[1]:
        st.markdown("**Masks** (layer → keep)")
        for fmt in ("safetensors", "pt"):
            _download(f"{stem}.masks.{fmt}", partial(exports.masks_bytes, summary.masks, fmt), f"download_masks_{fmt}")
    with columns[2]:
        st.markdown("**Recipe**")
        _download(f"{stem}.recipe.json", partial(exports.recipe_bytes, loaded, source, plan, summary.counts, active.layers),
                  "download_recipe", mime="application/json")
        if source.kind == "upload" and source.upload_format != "state_dict":
            name = exports.weights_argument(loaded, source)
            _download(name, partial(exports.original_weights_bytes, loaded), "download_original", when_clicked=True,
                      label=f"{name} (unpruned weights)")
            st.caption("The command line needs the weights as a state_dict file: this is your upload's.")
    st.subheader("Load it")
    fmt = "safetensors"
    if onnx is None:
        fmt = st.radio("Checkpoint format", ["safetensors", "pt"], horizontal=True, key="snippet_format",
                       label_visibility="collapsed")
    st.code(exports.load_snippet(loaded, fmt), language="python")
    st.subheader("Reproduce it headlessly")
    st.code(exports.cli_command(loaded, source), language="bash")
    st.caption("The recipe records the model's fingerprint and, per layer, how many filters are pruned; FPGM always "
               "removes a layer's lowest-scored filters, so the same weights give the same masks.")
    _slim_section(active, plan, stem)
    _finetuned_section(active, plan)


def _finetuned_section(active: ActiveModel, plan: SparsityPlan) -> None:
    """The session's fine-tuned model, beside the untrained exports above: checkpoint, masks, recipe, history, slimmed."""
    st.subheader("Fine-tuned model")
    kept = finetuning.current(active, plan)
    if kept is None:
        st.caption("Everything above is pruned and not trained again. The Fine-tune page trains the pruned model back "
                   "to accuracy; its result is offered here.")
        st.page_link("pages/finetune.py", label="Fine-tune", icon=":material/trending_up:")
        return
    result = kept.result
    stem = finetuning.stem(active)
    top1 = f"held-out top-1 {result.final.top1:.1%}, was {result.untrained.top1:.1%} untrained" if result.final.top1 is not None \
        else f"agreement {result.final.agreement:.1%}"
    st.markdown(f"**Fine-tuned** for {result.settings.epochs} epochs ({top1}) — not the untrained files above.")
    st.caption("The same architecture's state_dict: loads with `strict=True`; its pruned filters and their BatchNorm "
               "channels are exactly zero at its masks. The recipe holds every fine-tune setting, so "
               "`python -m fpgm_core finetune --recipe` reproduces it.")
    columns = st.columns(3, gap="large")
    with columns[0]:
        st.markdown("**Fine-tuned checkpoint**")
        for fmt in ("safetensors", "pt"):
            _download(f"{stem}.{fmt}", partial(finetuning.checkpoint_bytes, kept, fmt), f"download_ft_checkpoint_{fmt}",
                      when_clicked=True)
    with columns[1]:
        st.markdown("**Its masks**")
        for fmt in ("safetensors", "pt"):
            _download(f"{stem}.masks.{fmt}", partial(finetuning.masks_bytes, kept, fmt), f"download_ft_masks_{fmt}")
    with columns[2]:
        st.markdown("**Recipe and history**")
        _download(f"{stem}.recipe.json", partial(finetuning.recipe_bytes, kept, active, f"{stem}.masks.safetensors"),
                  "download_ft_recipe", mime="application/json")
        _download(f"{stem}.history.json", partial(finetuning.history_bytes, kept), "download_ft_history", mime="application/json")
    st.code(finetuning.replay_command(kept, active), language="bash")
    st.markdown("**Fine-tuned and physically smaller**")
    if not kept.slimmable:
        st.info("This model was fine-tuned with per-layer masks: layers added together (residual connections) were masked "
                "differently, so it cannot be slimmed as it is. Fine-tune with **Slimmable masks** to get one that can.")
        return
    session = st.session_state
    if st.button("Slim the fine-tuned model", key="slim_ft_button", icon=":material/compress:"):
        session.slim_ft_request = kept.fingerprint
    if session.get("slim_ft_request") != kept.fingerprint:
        return
    input_shape = tuple(active.loaded.input_shape)
    try:
        slim = finetuning.slimmed(kept, input_shape)
    except SlimError as exc:
        session.slim_ft_request = None
        _slim_failed(str(exc))
        return
    check = slim.verification
    st.markdown(f"Removed exactly its zeroed channels: parameters {slim.params_before:,} → {slim.params_after:,}, "
                f"FLOPs {slim.flops_before:,} → {slim.flops_after:,}. Verification **{'passed' if check.passed else 'failed'}**: "
                f"max abs diff vs the fine-tuned model {check.max_abs_diff:.3g} ≤ tolerance {check.tolerance:.3g}.")
    columns = st.columns(3, gap="large")
    for column, fmt in zip(columns, (".pt2", ".onnx", ".pt")):
        with column:
            _download(f"{stem}-slim{fmt}", partial(finetuning.slim_bytes, kept, fmt, input_shape),
                      f"download_ft_slim_{fmt[1:]}", when_clicked=True)


def _slim_section(active: ActiveModel, plan: SparsityPlan, stem: str) -> None:
    """Remove the pruned channels for real: a smaller model, verified and measured, as .pt2/.onnx/.pt."""
    st.subheader("Physically smaller model")
    st.caption("Slimming removes the pruned channels (and every input that reads them) instead of zeroing them. "
               "Layers that share channels lose them together; the result is checked against the masked model.")
    onnx = active.loaded.onnx
    if onnx is not None and not onnx.converted:
        st.info(f"Slimming needs the graph in PyTorch, and {onnx.filename} did not convert ({onnx.reason}). "
                "The masked ONNX graph above is complete; to slim, export the model again with an opset and ops "
                "onnx2torch converts (the classic exporter, opset ≤ 17), or load it from PyTorch.", icon=":material/info:")
        return
    session = st.session_state
    request = (active.key, slimming.plan_key(plan))
    if st.button("Slim the model", key="slim_button", icon=":material/compress:"):
        session.slim_request = request
    if session.get("slim_request") != request:
        return
    failures = session.setdefault("slim_failures", {})
    if request in failures:
        _slim_failed(failures[request])
        return
    loaded = active.loaded
    scores = cache.scores_as_tensors(cache.all_layer_scores(active.model, active.key, plan.metric, active.device))
    try:
        result = slimming.slimmed(active.model, active.key, request[1], plan, tuple(loaded.input_shape), scores, active.device)
    except slimming.SlimInterrupted as exc:
        session.slim_request = None  # not remembered: the button tries again
        _slim_failed(str(exc))
        return
    except SlimError as exc:
        failures[request] = str(exc)
        _slim_failed(str(exc))
        return
    check = result.verification
    columns = st.columns([3, 2], gap="large")
    with columns[0]:
        st.markdown("**Measured** (CPU latency: median of "
                    f"{slimming.LATENCY_REPEATS} runs{f', {result.threads} threads' if result.threads else ''})")
        st.dataframe(slimming.measured_table(result), width="stretch", key="slim_measured")
    with columns[1]:
        st.markdown("**Verification**")
        if check is not None:
            verdict = "passed" if check.passed else "failed"
            outputs = "≤" if check.outputs_match else ">"
            st.markdown(
                f"Verification **{verdict}**: max abs diff vs the masked model {check.max_abs_diff:.3g} "
                f"{outputs} tolerance {check.tolerance:.3g}; parameter and FLOP counts "
                f"{'match' if check.counts_match else 'do not match'} the prediction "
                f"({check.params_predicted:,} parameters, {check.flops_predicted:,} FLOPs)."
            )
    if result.blocked:
        st.warning(f"{len(result.blocked)} group(s) the plan prunes are kept whole: a layer blocks them.")
        st.dataframe(slimming.blocked_table(result), width="stretch", hide_index=True, key="slim_blocked")
    st.markdown("**Slimmed model**")
    columns = st.columns(3, gap="large")
    for column, fmt in zip(columns, (".pt2", ".onnx", ".pt")):
        with column:
            _download(slimming.file_name(stem, fmt), partial(slimming.file_bytes, result.model, fmt, tuple(loaded.input_shape)),
                      f"download_slim_{fmt[1:]}", when_clicked=True)
    st.caption("`.pt2` loads with `torch.export.load`, `.onnx` with onnxruntime; both are checked against the slimmed "
               "model before they are served.")
    st.caption(f"**.pt:** {PT_PICKLE_NOTE}.")


def _download(name: str, build: Callable[[], bytes], key: str, *, when_clicked: bool = False, label: str | None = None,
              mime: str = "application/octet-stream") -> None:
    """A download button for the file ``name``; a file that cannot be built says why, never with a traceback.

    ``when_clicked`` builds the file only when the button is clicked (large files); a failure then
    shows here on the page's next run.
    """
    failures = st.session_state.setdefault("export_failures", {})
    if name in failures:
        st.error(failures.pop(name))
    try:
        data = exports.built_when_clicked(name, build, failures) if when_clicked else exports.build_file(name, build)
    except ExportError as exc:
        st.error(str(exc))
        return
    st.download_button(label or name, data, file_name=name, mime=mime, on_click="ignore", icon=":material/download:", key=key)


def _slim_failed(message: str) -> None:
    st.error(message)
    st.info("The masked export above still works: its checkpoint loads into the unmodified architecture.")


require_entry(__file__)
page()
