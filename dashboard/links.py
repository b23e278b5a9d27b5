"""Shareable links: the page's URL carries the view, so a copied link opens the same view elsewhere.

The path names the page (``/sparsity``); the query string the rest of the view: the model (the
bundled demo, a torchvision or a timm architecture, with its weights), the Heatmaps layer, metric,
order and projection, the global sparsity, the ranking mode, the per-layer cap and output-layer
switch, and the overrides::

    /heatmaps?model=resnet18&weights=none&layer=layer1.0.conv1&metric=l1&order=index&sparsity=40&mode=uniform

A new session (a link opened in a fresh browser, or a refresh) starts from its URL
(:func:`opened_view`, given to ``init_state``); every run after that writes the session's view back
into the URL (:func:`publish`), so the address bar is always a link to what is on screen. A value
that is missing keeps its default; one that is malformed or names what this model lacks (a layer
of another model) is dropped with a notice naming it, never an exception.

What a link cannot carry: an uploaded file (weights or an ONNX graph: the bytes stay in the session
they were uploaded to) and your own code. A model factory is never named in a link, not even one
this server was started with, so a link can make a server build only the demo and the libraries'
registered architectures; whatever it says, code runs only where the person starting the server
named it (:func:`dashboard.sources.build_source` checks that again). Such a session's URL says
``model=upload``, ``model=onnx`` or ``model=factory`` and carries the rest of the view (the layer
and overrides, which are that model's, stay behind); opening it says which model to bring back.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import streamlit as st

from fpgm_core import METRICS, FpgmError, classification_architectures

from . import cache
from .projections import PROJECTIONS
from .sources import ModelSource
from .state import MODE_LABELS, ORDER_LABELS, SPARSITY_RANGE, WORKSPACE, Workspace

__all__ = ["PARAMS", "WEIGHTS", "CAP_RANGE", "NOT_CARRIED", "NOTICE", "view_params", "opened_view", "publish",
           "not_carried", "show_notice"]

# The query parameters, in the order the URL lists them.
PARAMS = ("model", "weights", "layer", "metric", "order", "projection", "sparsity", "mode", "cap", "output", "overrides")
WEIGHTS = ("default", "none")  # as the CLI's --weights: pretrained (bundled for the demo), or seeded random init
CAP_RANGE = (5, 100)  # the Sparsity page's per-layer cap slider
TIMM_PREFIX = "timm:"
# Model sources a link cannot carry (its ``model=`` value is the kind): what they are, how to get them back.
NOT_CARRIED = {
    "upload": ("uploaded weights", "upload the file again on the Model page"),
    "onnx": ("an uploaded ONNX model", "upload the file again on the Model page"),
    "factory": ("a model built by the server's own code", "choose it under Your code on the Model page"),
}
NOTICE = "link_notice"  # session key: (text, page it is shown on, None until the first page draws)


def view_params(state: Mapping[str, Any]) -> dict[str, str]:
    """The query parameters that reproduce the view in ``state`` (a session's values)."""
    current: Workspace = state[WORKSPACE]
    source = current.source
    travels = source.kind not in NOT_CARRIED
    params = {"model": source.arch, "weights": source.weights} if travels else {"model": source.kind}
    if travels and state.get("heat_layer"):
        params["layer"] = str(state["heat_layer"])
    params.update(metric=str(state["metric"]), order=str(state["order"]), projection=str(state["projection"]),
                  sparsity=str(int(state["sparsity_pct"])), mode=str(state["mode"]))
    if state["mode"] == "global":
        params["cap"] = str(int(state["max_layer_pct"]))
    if state["include_output"]:
        params["output"] = "1"
    if travels and current.override_items:
        params["overrides"] = ",".join(f"{name}:{value:g}" for name, value in current.override_items)
    return params


def not_carried(source: ModelSource) -> str | None:
    """What of ``source`` a link to the view leaves behind (None: the link carries the model too)."""
    if source.kind not in NOT_CARRIED:
        return None
    return f"Its link carries the view but not {NOT_CARRIED[source.kind][0]}."


def opened_view(defaults: Mapping[str, Any], query: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The session values a new session's URL asks for (``query``, default ``st.query_params``).

    ``defaults`` are the new session's values, the device among them. Every problem found is put
    into one notice (under :data:`NOTICE`) instead of raising; what it concerns keeps its default.
    """
    query = dict(st.query_params.to_dict() if query is None else query)
    values: dict[str, Any] = {}
    problems: list[str] = []
    notes: list[str] = []
    default_workspace: Workspace = defaults[WORKSPACE]
    source = _source(query, default_workspace.source, problems, notes)
    if source != default_workspace.source:
        values[WORKSPACE] = Workspace(source)
        values["source_kind"] = source.kind
        if source.kind == "torchvision":
            values["tv_arch"], values["tv_weights"] = source.arch, source.weights
        elif source.kind == "timm":
            values["timm_arch"], values["timm_weights"] = source.arch[len(TIMM_PREFIX):], source.weights
    _choice(query, "metric", list(METRICS), "metric", values, problems)
    _choice(query, "order", list(ORDER_LABELS), "order", values, problems)
    _choice(query, "projection", list(PROJECTIONS), "projection", values, problems)
    _choice(query, "mode", list(MODE_LABELS), "mode", values, problems)
    _percent(query, "sparsity", (SPARSITY_RANGE["min_value"], SPARSITY_RANGE["max_value"]), "sparsity_pct", values, problems)
    _percent(query, "cap", CAP_RANGE, "max_layer_pct", values, problems)
    if "output" in query:
        if query["output"] in ("0", "1"):
            values["include_output"] = query["output"] == "1"
        else:
            problems.append(f"output={query['output']!r} is not 0 or 1")
    if not notes and ("layer" in query or "overrides" in query):
        names = _layer_names(source, defaults["device"])
        if names is not None:
            _layer(query, names, values, problems)
            overrides = _overrides(query, names, problems)
            if overrides:
                values[WORKSPACE] = values.get(WORKSPACE, default_workspace).with_overrides(overrides)
    unknown = [name for name in query if name not in PARAMS]
    if unknown:
        problems.append(f"parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                        f"{'are' if len(unknown) > 1 else 'is'} not part of a view ({', '.join(PARAMS)})")
    if problems:
        notes.append("This link's " + "; ".join(problems) + ". Those parts of the view start from their defaults.")
    if notes:
        values[NOTICE] = (" ".join(notes), None)
    return values


def publish() -> None:
    """Write the session's view into the URL, where it differs (each write is a message to the browser)."""
    params = view_params(st.session_state)
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


def show_notice(page: str) -> None:
    """Show the opened link's notice on the page it opened, until the user moves to another page.

    ``page`` is the page's URL path; the root page, which only hands over to Heatmaps, shows nothing
    and keeps the notice for the page it hands over to.
    """
    notice = st.session_state.get(NOTICE)
    if notice is None or not page:
        return
    text, shown_on = notice
    if shown_on is None:
        st.session_state[NOTICE] = (text, page)
    elif shown_on != page:
        del st.session_state[NOTICE]
        return
    st.warning(text, icon=":material/link_off:")


def _source(query: Mapping[str, str], default: ModelSource, problems: list[str], notes: list[str]) -> ModelSource:
    """The model the link names, if it names one this server may build; never a factory (code)."""
    weights = query.get("weights", "default")
    if weights not in WEIGHTS:
        problems.append(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
        return default
    if "model" not in query:
        return default
    arch = query["model"]
    if arch in NOT_CARRIED:
        what, how = NOT_CARRIED[arch]
        dropped = [name for name in ("layer", "overrides") if name in query]
        notes.append(f"This link was made with {what}, which a link cannot carry: {how}. The rest of its view is "
                     f"here, on {default.label()}" + (f" (the {' and '.join(dropped)} it names belonged to that model)" if dropped else "") + ".")
        return default
    if arch == "demo":
        return ModelSource("demo", "demo", weights)
    if arch.startswith(TIMM_PREFIX):
        if arch[len(TIMM_PREFIX):] in _timm_architectures():
            return ModelSource("timm", arch, weights)
        problems.append(f"model={arch!r} is not one of timm's architectures")
        return default
    if arch in classification_architectures():
        return ModelSource("torchvision", arch, weights)
    # A factory (package.module:callable) included: a link never names code to run.
    code = " (a link never names code to run: your own models are chosen on the Model page)" if ":" in arch else ""
    problems.append(f"model={arch!r} is neither the demo nor a torchvision or timm architecture{code}")
    return default


def _timm_architectures() -> set[str]:
    """timm's registered names (as the Model page lists them): looking them up imports timm, runs nothing else."""
    from fpgm_core.models.timm import timm_architectures

    return set(timm_architectures())


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
    if text.isascii() and text.isdigit() and bounds[0] <= int(text) <= bounds[1]:
        values[key] = int(text)
    else:
        problems.append(f"{param}={text!r} is not a whole percentage from {bounds[0]} to {bounds[1]}")


def _layer_names(source: ModelSource, device: str) -> list[str] | None:
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
