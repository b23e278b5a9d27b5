"""Per-session state: one key per value, and the session's model and plan read from them.

Every value a widget shows lives under that widget's own key (``key="sparsity_pct"`` with
``persist_state="session"``): the widget *is* the session value, on every page that draws it, so
nothing copies it back and forth and no run sends an older value to the browser. What no widget
holds — the model's source, the per-layer overrides, the override editor's generation — is one
frozen :class:`Workspace` under one key, replaced whole in one assignment. A change that also sets
widget values (a loaded plan, a shared link, a new model) puts them in the new workspace as
``pending``; the next run writes them to their keys before any widget is drawn. So a run sees a
change whole or not at all, even where Streamlit stops a run midway because the user did
something new. ``init_state`` runs first in every run of ``app.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import streamlit as st
import torch
from torch import Tensor, nn

from fpgm_core import FpgmError, LayerInfo, LoadedModel, PlanError, SparsityPlan, mask_from_scores, plan_counts, plan_masks

from . import cache
from .sources import ModelSource, default_source
from .summary import PlanSummary, apply_editor_edits, needs_all_scores, summarize

__all__ = [
    "DEFAULTS",
    "METRIC_LABELS",
    "MODE_LABELS",
    "ORDER_LABELS",
    "SPARSITY_RANGE",
    "WORKSPACE",
    "ActiveModel",
    "Workspace",
    "WIDGET_KEYS",
    "init_state",
    "resend_widget_values",
    "page_drawn",
    "workspace",
    "require_entry",
    "follow_deep_link",
    "commit_model",
    "load_plan",
    "clear_overrides",
    "fold_editor_edits",
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
ORDER_LABELS = {"score": "FPGM score", "index": "index"}

# The global-sparsity slider's range, the same on every page that draws it: a slider's identity
# is its key plus its range, so a different range on another page would be another widget that
# starts from its own default.
SPARSITY_RANGE: dict[str, int] = {"min_value": 0, "max_value": 95, "step": 1}

# Session values behind the widgets (each under its widget's key), with their defaults.
# Percentages are ints so the sliders read "30%".
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
    "tv_arch": "resnet18",
    "tv_weights": "default",
    "timm_arch": "resnet50",  # in every timm release's list
}

WORKSPACE = "workspace"  # the session key of the Workspace
# Every session value a widget holds, on whichever page.
WIDGET_KEYS: tuple[str, ...] = (*DEFAULTS, "source_kind", "upload_arch")


@dataclass(frozen=True)
class Workspace:
    """What the session works on that no widget holds: its model's source and the plan's overrides.

    Replaced whole, never edited: a run sees either the old or the new one, never a mix (a new
    model with the old model's overrides, or cleared overrides with the old editor's edits).
    ``upload_state`` is an upload's tensors (read-only); ``notice`` what to tell about the load;
    ``override_items`` the per-layer sparsities as sorted pairs; ``editor_generation`` names the
    override editor, and a new one drops the old editor's pending edits; ``pending`` are session
    values (widget values mostly) that the next run writes before any widget is drawn.
    """

    source: ModelSource
    upload_state: Mapping[str, Tensor] | None = None
    notice: str | None = None
    override_items: tuple[tuple[str, float], ...] = ()
    editor_generation: int = 0
    pending: tuple[tuple[str, Any], ...] = ()

    @property
    def overrides(self) -> dict[str, float]:
        """The per-layer overrides, layer name → sparsity (a copy)."""
        return dict(self.override_items)

    def with_overrides(self, overrides: Mapping[str, float], *, new_editor: bool = False) -> "Workspace":
        """This workspace with ``overrides``; ``new_editor`` also starts a fresh override editor."""
        items = tuple(sorted((str(name), float(value)) for name, value in overrides.items()))
        return replace(self, override_items=items, editor_generation=self.editor_generation + int(new_editor))

    def with_loaded_plan(self, overrides: Mapping[str, float], metric: str) -> "Workspace":
        """This workspace with a suggested plan: ``overrides`` only (global sparsity 0, uniform, ``metric``).

        A new editor drops pending edits of the per-layer table, which would undo the overrides.
        """
        loaded = self.with_overrides(overrides, new_editor=True)
        widgets = (("sparsity_pct", 0), ("mode", "uniform"), ("metric", metric), ("include_output", False))
        return replace(loaded, pending=loaded.pending + widgets)


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


def init_state(opened_view: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> bool:
    """Give a new session its defaults and the default model, then write any pending values.

    ``opened_view``, for a new session only, is given the defaults and returns the session values
    its URL asks for instead (a shared link; :data:`WORKSPACE` among them for another model).
    Returns whether the session is new. The workspace is written last: a first run stopped midway
    leaves the session new, and the next run starts it again from its own URL.
    """
    state = st.session_state
    new = WORKSPACE not in state
    if new:
        source = default_source()
        values: dict[str, Any] = {**DEFAULTS, "flash": None, "source_kind": source.kind if source.kind != "upload" else "demo",
                                  "upload_arch": source.arch, WORKSPACE: Workspace(source)}
        if opened_view is not None:
            values.update(opened_view(values))
        current = values.pop(WORKSPACE)
        for key, value in values.items():
            state[key] = value
        state[WORKSPACE] = current
    for key, value in DEFAULTS.items():
        state.setdefault(key, value)
    _write_pending()
    state.entry_seen = True
    return new


def _write_pending() -> None:
    """Write the workspace's pending values to their keys, then drop them from the workspace.

    Runs before any widget is drawn (setting a drawn widget's value is an error). A run stopped
    midway leaves them pending, and the next run writes them all again.
    """
    state = st.session_state
    current: Workspace = state[WORKSPACE]
    if not current.pending:
        return
    for key, value in current.pending:
        state[key] = value
    state[WORKSPACE] = replace(current, pending=())


def resend_widget_values(page: str) -> None:
    """On a run that opens ``page`` (its file's stem; not a rerun of the page drawn last), hand every
    widget its value afresh.

    Streamlit 1.67 keeps a ``persist_state="session"`` value under its key only as a copy taken
    when a widget leaves the page, at the end of a run. A widget with the same key on the page
    being opened registers before that, and reads the copy from its *previous* departure: after
    30 % → Heatmaps → Sparsity, 55 % there → Heatmaps, the Heatmaps run computed 30 % and told the
    browser 30 % (tests/test_app_state.py). A value set in code and first drawn on another page
    (a new session's defaults) is not sent at all: the browser shows the widget's minimum while
    the plan is 30 %. Writing each value to its own key before the page draws makes the widget
    take that value and send it to the browser. Only on opening a page: doing it on every run would
    send the value back while the user is still pressing keys, and roll the slider back.
    """
    session = st.session_state
    # Opened: the last run that got this far was on another page, or the last run to finish was.
    if session.get("drawing_page") != page or session.get("drawn_page") != page:
        for key in WIDGET_KEYS:
            if key in session:
                session[key] = session[key]
    session.drawing_page = page


def page_drawn(page: str) -> None:
    """In ``app.py``, after ``page`` (its file's stem) ran to its end: its widgets hold their values now."""
    st.session_state.drawn_page = page


def workspace() -> Workspace:
    """The session's :class:`Workspace`."""
    return st.session_state[WORKSPACE]


def require_entry(page_file: str) -> None:
    """Every page's first call: hand over to ``app.py`` where the page runs without it, write pending
    values, and hand the page's widgets their values when the page is being opened
    (:func:`resend_widget_values`).

    Streamlit runs a deep-linked page (``/sparsity``) of a freshly started server on its own,
    without the entry script, because a ``pages/`` folder exists (its older multipage mode) until
    some session has called ``st.navigation``; AppTest always runs pages that way. A run without
    session state switches to the entry, which builds the navigation and switches back to the
    page asked for, keeping the link's query parameters both ways.
    """
    if not st.session_state.get("entry_seen"):
        st.session_state.deep_link = f"pages/{Path(page_file).name}"
        st.switch_page(str(Path(page_file).resolve().parents[1] / "app.py"), query_params=st.query_params.to_dict())
    _write_pending()  # app.py did, unless the page runs alone (AppTest)
    resend_widget_values(Path(page_file).stem)


def follow_deep_link() -> None:
    """In ``app.py``, after the navigation exists: go to the page a deep link asked for."""
    target = st.session_state.pop("deep_link", None)
    if target is not None:
        st.switch_page(target, query_params=st.query_params.to_dict())


def commit_model(source: ModelSource, state: Mapping[str, Tensor] | None = None, notice: str | None = None,
                 flash: str | None = None) -> None:
    """Make ``source`` the session's model with a fresh plan for it (its layers differ), in one assignment.

    The Heatmaps layer starts over and ``flash`` is shown once, from the next run (``st.rerun()``).
    """
    session = st.session_state
    generation = session[WORKSPACE].editor_generation
    session[WORKSPACE] = Workspace(source, state, notice, (), generation + 1, (("heat_layer", None), ("flash", flash)))


def load_plan(overrides: Mapping[str, float], metric: str) -> None:
    """Make a suggested plan the session's plan (:meth:`Workspace.with_loaded_plan`), in one assignment.

    The widget values it sets are written by the next run, before its widgets are drawn.
    """
    session = st.session_state
    session[WORKSPACE] = session[WORKSPACE].with_loaded_plan(overrides, metric)


def clear_overrides() -> None:
    """Drop every override and the editor's pending edits (a button's ``on_click``)."""
    session = st.session_state
    session[WORKSPACE] = session[WORKSPACE].with_overrides({}, new_editor=True)


def editor_key(generation: int | None = None) -> str:
    """Widget key of the per-layer override editor; a new one whenever its edits must be dropped."""
    return f"override_editor_{workspace().editor_generation if generation is None else generation}"


def fold_editor_edits(names: list[str], generation: int) -> bool:
    """Make the override editor's edits the workspace's overrides; whether that changed them.

    The editor's ``on_change`` (so the edit counts before the rerun it starts, and the sidebar's
    plan line shows it); the Sparsity page calls it again before drawing, for an edit whose
    callback Streamlit stopped midway. Folding the same edits twice changes nothing. ``names``
    are the editor's rows (layer names, in order) and ``generation`` the editor's: edits of an
    editor since replaced (a new model, cleared overrides) are ignored.
    """
    session = st.session_state
    current: Workspace = session[WORKSPACE]
    if current.editor_generation != generation:
        return False
    folded = current.with_overrides(apply_editor_edits(current.overrides, names, session.get(editor_key(generation))))
    if folded.override_items == current.override_items:
        return False
    session[WORKSPACE] = folded
    return True


def active_model() -> ActiveModel:
    """The session's model (cached), or an error on the page and a stop."""
    current, device = workspace(), st.session_state.device
    source = current.source
    try:
        loaded = cache.load_model(source, device, current.upload_state if source.kind in ("upload", "onnx") else None)
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
    """The plan the widgets and the workspace describe (not yet validated against a model)."""
    session = st.session_state
    return SparsityPlan(
        sparsity=session.sparsity_pct / 100,
        metric=session.metric,
        overrides=workspace().overrides,
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
