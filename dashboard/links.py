"""Shareable links: the page's URL carries the view, so a copied link opens the same view elsewhere.

The path names the page (``/sparsity``); the query string the rest of the view: the model (the
bundled demo or a torchvision architecture, with its weights), the Heatmaps layer, metric, order,
global sparsity, ranking mode, the per-layer cap and output-layer switch, and the overrides::

    /heatmaps?model=resnet18&weights=none&layer=layer1.0.conv1&metric=l1&order=index&sparsity=40&mode=uniform

A new session (a link opened in a fresh browser, or a refresh) starts from its URL
(:func:`opened_view`, given to ``init_state``); every run after that writes the session's view back
into the URL (:func:`publish`), so the address bar is always a link to what is on screen. A value
that is missing keeps its default; one that is malformed or names what this model lacks (a layer
of another model) is dropped with a notice saying so, never an exception. An uploaded model cannot
travel in a link: its URL carries the rest of the view, and says so.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import streamlit as st

from fpgm_core import METRICS, FpgmError, classification_architectures

from . import cache
from .sources import ModelSource
from .state import MODE_LABELS, ORDER_LABELS, SPARSITY_RANGE, WORKSPACE, Workspace

__all__ = ["PARAMS", "WEIGHTS", "view_params", "opened_view", "publish", "show_notice"]

# The query parameters, in the order the URL lists them.
PARAMS = ("model", "weights", "layer", "metric", "order", "sparsity", "mode", "cap", "output", "overrides")
WEIGHTS = ("default", "none")  # as the CLI's --weights: pretrained (bundled for the demo), or seeded random init
CAP_RANGE = (5, 100)  # the Sparsity page's per-layer cap slider
NOTICE = "link_notice"  # session key: (text, page it is shown on, None until the first page draws)


def view_params(state: Mapping[str, Any]) -> dict[str, str]:
    """The query parameters that reproduce the view in ``state`` (a session's values)."""
    current: Workspace = state[WORKSPACE]
    params: dict[str, str] = {}
    source = current.source
    if source.kind in ("demo", "torchvision"):
        params["model"] = source.arch
        params["weights"] = source.weights
    if state.get("heat_layer"):
        params["layer"] = str(state["heat_layer"])
    params.update(metric=str(state["metric"]), order=str(state["order"]), sparsity=str(int(state["sparsity_pct"])),
                  mode=str(state["mode"]))
    if state["mode"] == "global":
        params["cap"] = str(int(state["max_layer_pct"]))
    if state["include_output"]:
        params["output"] = "1"
    if current.override_items:
        params["overrides"] = ",".join(f"{name}:{value:g}" for name, value in current.override_items)
    return params


def opened_view(defaults: Mapping[str, Any], query: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The session values a new session's URL asks for (``query``, default ``st.query_params``).

    ``defaults`` are the new session's values, the device among them. Every problem found is put
    into one notice (under ``link_notice``) instead of raising; what it concerns keeps its default.
    """
    query = dict(st.query_params.to_dict() if query is None else query)
    values: dict[str, Any] = {}
    problems: list[str] = []
    default_workspace: Workspace = defaults[WORKSPACE]
    source = _source(query, default_workspace.source, problems)
    if source != default_workspace.source:
        values[WORKSPACE] = Workspace(source)
        values["source_kind"] = source.kind
        if source.kind == "torchvision":
            values["tv_arch"], values["tv_weights"] = source.arch, source.weights
    _choice(query, "metric", METRICS, "metric", values, problems)
    _choice(query, "order", list(ORDER_LABELS), "order", values, problems)
    _choice(query, "mode", list(MODE_LABELS), "mode", values, problems)
    _percent(query, "sparsity", (SPARSITY_RANGE["min_value"], SPARSITY_RANGE["max_value"]), "sparsity_pct", values, problems)
    _percent(query, "cap", CAP_RANGE, "max_layer_pct", values, problems)
    if "output" in query:
        if query["output"] in ("0", "1"):
            values["include_output"] = query["output"] == "1"
        else:
            problems.append(f"output={query['output']!r} is not 0 or 1")
    if "layer" in query or "overrides" in query:
        names = _layer_names(source, defaults["device"], problems)
        if names is not None:
            _layer(query, names, values, problems)
            overrides = _overrides(query, names, problems)
            if overrides:
                base = values.get(WORKSPACE, default_workspace)
                values[WORKSPACE] = base.with_overrides(overrides)
    if problems:
        values[NOTICE] = ("This link's " + "; ".join(problems) + ". Those parts of the view start from their defaults.", None)
    return values


def publish() -> None:
    """Write the session's view into the URL, where it differs (each write is a message to the browser)."""
    params = view_params(st.session_state)
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


def show_notice(page: str) -> None:
    """Show the opened link's notice on the page it opened, until the user moves to another page."""
    notice = st.session_state.get(NOTICE)
    if notice is None:
        return
    text, shown_on = notice
    if shown_on is None:
        st.session_state[NOTICE] = (text, page)
    elif shown_on != page:
        del st.session_state[NOTICE]
        return
    st.warning(text, icon=":material/link_off:")


def _source(query: Mapping[str, str], default: ModelSource, problems: list[str]) -> ModelSource:
    if "model" not in query:
        return default
    arch, weights = query["model"], query.get("weights", "default")
    if weights not in WEIGHTS:
        problems.append(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
        return default
    if arch == "demo":
        return ModelSource("demo", "demo", weights)
    if arch not in classification_architectures():
        problems.append(f"model={arch!r} is neither the demo nor a torchvision architecture")
        return default
    return ModelSource("torchvision", arch, weights)


def _choice(query, param: str, options: list[str], key: str, values: dict, problems: list[str]) -> None:
    if param not in query:
        return
    if query[param] in options:
        values[key] = query[param]
    else:
        problems.append(f"{param}={query[param]!r} is not one of {', '.join(options)}")


def _percent(query, param: str, bounds: tuple[int, int], key: str, values: dict, problems: list[str]) -> None:
    if param not in query:
        return
    text = query[param]
    if text.isdigit() and bounds[0] <= int(text) <= bounds[1]:
        values[key] = int(text)
    else:
        problems.append(f"{param}={text!r} is not a whole percentage from {bounds[0]} to {bounds[1]}")


def _layer_names(source: ModelSource, device: str, problems: list[str]) -> list[str] | None:
    """The model's prunable layer names, or None where it cannot be loaded (its page says why)."""
    try:
        loaded = cache.load_model(source, device)
    except FpgmError:
        return None
    return [layer.name for layer in cache.model_layers(loaded.model, (source, device))]


def _layer(query, names: list[str], values: dict, problems: list[str]) -> None:
    if "layer" not in query:
        return
    if query["layer"] in names:
        values["heat_layer"] = query["layer"]
    else:
        problems.append(f"layer={query['layer']!r} is not a prunable layer of this model")


def _overrides(query, names: list[str], problems: list[str]) -> dict[str, float]:
    overrides: dict[str, float] = {}
    for item in filter(None, query.get("overrides", "").split(",")):
        name, _, text = item.rpartition(":")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if name not in names:
            problems.append(f"override {item!r} names no prunable layer of this model")
        elif not 0.0 <= value <= 1.0:  # NaN fails too
            problems.append(f"override {item!r} is not a sparsity from 0 to 1")
        else:
            overrides[name] = value
    return overrides
