"""Export page: download the masked checkpoint, its masks and recipe; the code that loads and reproduces it."""

from functools import partial

import streamlit as st

from dashboard import exports
from dashboard.state import active_model, current_plan, plan_description, plan_error, plan_summary, require_entry
from fpgm_core import PlanError


def page() -> None:
    st.title("Export")
    active = active_model()
    plan = current_plan()
    try:
        summary = plan_summary(active, plan)
    except PlanError as exc:
        plan_error(exc)
        return
    loaded, source = active.loaded, active.source
    stem = exports.export_stem(loaded)
    total = sum(layer.filters for layer in active.layers)
    st.markdown(f"**{source.label()}** · plan {plan_description(plan)} · **{summary.pruned:,} of {total:,} filters** pruned")
    st.caption("The checkpoint is the full architecture's state_dict with the pruned filters (and their BatchNorm "
               "channels) set to exactly zero, so it loads with `strict=True` into the unmodified model.")
    columns = st.columns(3, gap="large")
    with columns[0]:
        st.markdown("**Masked checkpoint**")
        for fmt, mime in (("safetensors", "application/octet-stream"), ("pt", "application/octet-stream")):
            st.download_button(
                f"{stem}.{fmt}", partial(exports.checkpoint_bytes, loaded, summary.masks, fmt), file_name=f"{stem}.{fmt}",
                mime=mime, on_click="ignore", icon=":material/download:", key=f"download_checkpoint_{fmt}",
            )
    with columns[1]:
        st.markdown("**Masks** (layer → keep)")
        for fmt in ("safetensors", "pt"):
            st.download_button(
                f"{stem}.masks.{fmt}", exports.masks_bytes(summary.masks, fmt), file_name=f"{stem}.masks.{fmt}",
                mime="application/octet-stream", on_click="ignore", icon=":material/download:", key=f"download_masks_{fmt}",
            )
    with columns[2]:
        st.markdown("**Recipe**")
        recipe = exports.recipe_bytes(loaded, source, plan, summary.counts, active.layers)
        st.download_button(f"{stem}.recipe.json", recipe, file_name=f"{stem}.recipe.json", mime="application/json",
                           on_click="ignore", icon=":material/download:", key="download_recipe")
        if source.kind == "upload" and source.upload_format != "state_dict":
            name = exports.weights_argument(loaded, source)
            st.download_button(f"{name} (unpruned weights)", partial(exports.original_weights_bytes, loaded), file_name=name,
                               mime="application/octet-stream", on_click="ignore", icon=":material/download:",
                               key="download_original")
            st.caption("The command line needs the weights as a state_dict file: this is your upload's.")
    st.subheader("Load it")
    fmt = st.radio("Checkpoint format", ["safetensors", "pt"], horizontal=True, key="snippet_format", label_visibility="collapsed")
    st.code(exports.load_snippet(loaded, fmt), language="python")
    st.subheader("Reproduce it headlessly")
    st.code(exports.cli_command(loaded, source), language="bash")
    st.caption("The recipe records the model's fingerprint and, per layer, how many filters are pruned; FPGM always "
               "removes a layer's lowest-scored filters, so the same weights give the same masks.")


require_entry(__file__)
page()
