"""Per-session state: its defaults, the active model, and the plan built from the widgets.

Each browser session has one model source and one plan in ``st.session_state``; sessions never
share them (the caches share only results keyed by model identity). ``init_state`` runs once per
rerun in ``app.py`` before any page. A widget whose value must outlive its page is created with
``persist_state="session"``; one that several pages show (global sparsity, metric) is bound to a
plain session value with :func:`shared`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from torch import nn

from fpgm_core import FpgmError, LayerInfo, LoadedModel, PlanError, SparsityPlan, mask_from_scores, plan_counts, plan_masks

from . import cache
from .sources import ModelSource, default_source
from .summary import PlanSummary, needs_all_scores, summarize

__all__ = [
    "DEFAULTS",
    "METRIC_LABELS",
    "MODE_LABELS",
    "ActiveModel",
    "init_state",
    "require_entry",
    "follow_deep_link",
    "shared",
    "commit_model",
    "active_model",
    "current_plan",
    "plan_description",
    "plan_summary",
    "layer_keep",
    "editor_key",
    "plan_error",
]

METRIC_LABELS = {"l1": "L1", "l2": "L2", "cosine": "cosine"}
MODE_LABELS = {"uniform": "per layer (uniform)", "global": "global ranking"}

# Session values behind the widgets, with their defaults. Percentages are ints so
# the sliders read "30%".
DEFAULTS: dict[str, object] = {
    "sparsity_pct": 30,
    "metric": "l2",
    "mode": "uniform",
    "max_layer_pct": 90,
    "include_output": False,
    "order": "score",
    "projection": "PCA",
    "device": "cpu",
    "heat_layer": None,
    "source_kind": None,
    "tv_arch": "resnet18",
    "tv_weights": "default",
    "upload_arch": None,
}


@dataclass(frozen=True)
class ActiveModel:
    """The session's model as the pages use it: cached model, its identity and its layers."""

    loaded: LoadedModel
    source: ModelSource
    device: str
    key: cache.ModelKey
    layers: list[LayerInfo]

    @property
    def model(self) -> nn.Module:
        """The cached model itself: read it, never modify it."""
        return self.loaded.model

    def layer(self, name: str) -> LayerInfo:
        """The prunable layer called ``name``."""
        return next(layer for layer in self.layers if layer.name == name)


def init_state() -> None:
    """Give a new session its defaults (the default model, an empty plan); later calls do nothing."""
    state = st.session_state
    if "source" not in state:
        source = default_source()
        state.source = source
        state.upload_state = None
        state.overrides = {}
        state.editor_generation = 0
        state.load_notice = None
        state.flash = None
        state.source_kind = source.kind if source.kind != "upload" else "demo"
        state.upload_arch = source.arch
    for key, value in DEFAULTS.items():
        state.setdefault(key, value)
    state.entry_seen = True


def require_entry(page_file: str) -> None:
    """Hand over to ``app.py`` when a page file runs without it, then come back to this page.

    Streamlit runs a deep-linked page (``/sparsity``) of a freshly started server on its own,
    without the entry script, because a ``pages/`` folder exists (its older multipage mode) until
    some session has called ``st.navigation``. Such a run has no session state yet: it switches
    to the entry, which builds the navigation and switches back to the page asked for.
    """
    if st.session_state.get("entry_seen"):
        return
    st.session_state.deep_link = f"pages/{Path(page_file).name}"
    st.switch_page(str(Path(page_file).resolve().parents[1] / "app.py"))


def follow_deep_link() -> None:
    """In ``app.py``, after the navigation exists: go to the page a deep link asked for."""
    target = st.session_state.pop("deep_link", None)
    if target is not None:
        st.switch_page(target)


def shared(key: str) -> dict[str, Any]:
    """Keyword arguments for a widget that several pages show for the same session value ``key``.

    Two pages cannot share one widget key (each page registers its own widget, which would start
    from its default), so the widget gets its own key, is set from the session value before it is
    drawn, and copies a change back in its callback, which runs before the rerun reads the value.
    """
    widget_key = f"{key}_widget"
    st.session_state[widget_key] = st.session_state[key]
    return {"key": widget_key, "on_change": _copy_back, "args": (widget_key, key)}


def _copy_back(widget_key: str, key: str) -> None:
    st.session_state[key] = st.session_state[widget_key]


def commit_model(source: ModelSource, state=None, notice: str | None = None, flash: str | None = None) -> None:
    """Make ``source`` the session's model and start a fresh plan for it (its layers differ)."""
    session = st.session_state
    session.source = source
    session.upload_state = state
    session.load_notice = notice
    session.overrides = {}
    session.editor_generation += 1
    session.heat_layer = None
    session.flash = flash


def editor_key() -> str:
    """Widget key of the per-layer override editor; a new one whenever its edits must be dropped."""
    return f"override_editor_{st.session_state.editor_generation}"


def active_model() -> ActiveModel:
    """The session's model (cached), or an error on the page and a stop."""
    session = st.session_state
    source, device = session.source, session.device
    try:
        loaded = cache.load_model(source, device, session.upload_state if source.kind in ("upload", "onnx") else None)
    except FpgmError as exc:
        st.error(f"The model could not be loaded: {exc}")
        st.page_link("pages/model.py", label="Choose another model", icon=":material/arrow_back:")
        st.stop()
    key = (source, device)
    layers = cache.model_layers(loaded.model, key)
    if not layers:
        st.error("This model has no Conv or Linear layers, so FPGM has nothing to prune.")
        st.stop()
    return ActiveModel(loaded, source, device, key, layers)


def current_plan() -> SparsityPlan:
    """The plan the widgets describe (not yet validated against a model)."""
    session = st.session_state
    return SparsityPlan(
        sparsity=session.sparsity_pct / 100,
        metric=session.metric,
        overrides=dict(session.overrides),
        mode=session.mode,
        max_layer_sparsity=session.max_layer_pct / 100,
        include_output=bool(session.include_output),
    )


def plan_description(plan: SparsityPlan) -> str:
    """One line, e.g. ``30% · per layer (uniform) · L2 · 2 overrides``."""
    parts = [f"{plan.sparsity:.0%}", MODE_LABELS[plan.mode], METRIC_LABELS.get(plan.metric, str(plan.metric))]
    if plan.mode == "global":
        parts.append(f"≤ {plan.max_layer_sparsity:.0%} per layer")
    if plan.overrides:
        parts.append(f"{len(plan.overrides)} override{'s' if len(plan.overrides) != 1 else ''}")
    return " · ".join(parts)


def plan_summary(active: ActiveModel, plan: SparsityPlan) -> PlanSummary:
    """Masks, counts and costs of ``plan`` from cached scores, FLOPs and producers."""
    scores = cache.scores_as_tensors(cache.all_layer_scores(active.model, active.key, plan.metric, active.device))
    flops = cache.model_flops(active.model, active.key, active.loaded.input_shape)
    producers = cache.model_producers(active.model, active.key)
    return summarize(active.model, plan, scores, active.loaded.input_shape, flops, producers)


def layer_keep(active: ActiveModel, plan: SparsityPlan, layer: str, scores: np.ndarray) -> np.ndarray:
    """The keep-mask of one layer under ``plan``; in uniform mode without scoring other layers."""
    if needs_all_scores(plan):
        every = cache.scores_as_tensors(cache.all_layer_scores(active.model, active.key, plan.metric, active.device))
        keep = plan_masks(active.model, plan, scores=every).get(layer)
        return keep.numpy() if keep is not None else np.ones(len(scores), dtype=bool)
    counts = plan_counts(active.layers, plan)
    if layer not in counts:
        return np.ones(len(scores), dtype=bool)
    return mask_from_scores(torch.from_numpy(scores), counts[layer]).numpy()


def plan_error(exc: PlanError) -> None:
    """Show a plan problem without a traceback."""
    st.error(f"This plan cannot be applied: {exc}")
