"""The physically smaller model: the engine's slimming (:mod:`fpgm_core.slim`) behind bounded caches.

A slim is cached as a resource by (model key, plan key), where the plan key is the plan's
``repr`` (the plan itself holds a dict). The slimmed model is shared by sessions: never modify
it. Dependency groups are cached as data by model key. The exported files are built only when
their download button is clicked (``serialize_model`` exports and checks each one). Slimming that
stops on an unexpected error (memory, a library failure) raises :class:`SlimInterrupted`, which,
unlike the SlimError of a model that cannot be slimmed, is worth retrying.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import streamlit as st
from torch import Tensor, nn

from fpgm_core import FpgmError, SparsityPlan
from fpgm_core.groups import dependency_groups
from fpgm_core.slim import SlimError, SlimResult, serialize_model, slim_model

from .cache import ModelKey
from .summary import format_count

__all__ = [
    "LATENCY_REPEATS",
    "SlimInterrupted",
    "plan_key",
    "slimmed",
    "model_groups",
    "groups_table",
    "measured_table",
    "blocked_table",
    "file_bytes",
    "file_name",
]

LATENCY_REPEATS = 3


class SlimInterrupted(SlimError):
    """Slimming stopped midway on an unexpected error: a matter of the moment, not of the model or plan."""


def plan_key(plan: SparsityPlan) -> str:
    """A hashable stand-in for ``plan`` (equal plans give equal keys)."""
    return repr(plan)


@st.cache_resource(max_entries=4, show_spinner="Slimming the model and measuring it…")
def slimmed(
    _model: nn.Module, model_key: ModelKey, plan_key: str, _plan: SparsityPlan, input_shape: tuple[int, ...],
    _scores: Mapping[str, Tensor] | None, device: str,
) -> SlimResult:
    """The slimmed, verified and timed model of ``_plan``; raises SlimError (not cached) when it cannot be."""
    try:
        return slim_model(_model, _plan, input_shape=input_shape, scores=_scores, device=device, verify=True,
                          latency_repeats=LATENCY_REPEATS)
    except FpgmError:
        raise
    except Exception as exc:  # slim_model cuts a copy, so the model is intact whatever stopped it
        raise SlimInterrupted(
            f"Slimming stopped midway ({type(exc).__name__}: {exc}). The model and the plan are unchanged; "
            "press the button to try again."
        ) from exc


@st.cache_data(max_entries=8, show_spinner="Tracing the model's dependency groups…")
def model_groups(_model: nn.Module, model_key: ModelKey, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """The model's dependency groups as JSON-ready dicts; raises GroupError when it cannot be traced."""
    return [group.to_dict() for group in dependency_groups(_model, input_shape)]


def groups_table(groups: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per dependency group: its root layer, the layers that lose the same channels, and what blocks it."""
    return pd.DataFrame(
        [
            {
                "root": group["root"],
                "layers": ", ".join(group["layers"]),
                "channels": group["channels"],
                "blocked_by": group["blocked_by"] or "",
                "reason": group["reason"] or "",
            }
            for group in groups
        ],
        columns=["root", "layers", "channels", "blocked_by", "reason"],
    )


def _size(count: int) -> str:
    return f"{count / 1024:,.1f} KiB" if count < 1024**2 else f"{count / 1024**2:,.2f} MiB"


def _change(before: float, after: float) -> str:
    return f"{after / before - 1:+.1%}" if before else "—"


def measured_table(result: SlimResult) -> pd.DataFrame:
    """Measured before/after: parameters, FLOPs, checkpoint size and CPU latency per batch size."""
    rows = [
        ("Parameters", format_count(result.params_before), format_count(result.params_after),
         _change(result.params_before, result.params_after)),
        ("FLOPs / forward", format_count(result.flops_before), format_count(result.flops_after),
         _change(result.flops_before, result.flops_after)),
        ("Checkpoint size (state_dict)", _size(result.state_dict_bytes_before), _size(result.state_dict_bytes_after),
         _change(result.state_dict_bytes_before, result.state_dict_bytes_after)),
    ]
    before, after = result.latency_ms.get("before", {}), result.latency_ms.get("after", {})
    for batch in sorted(before):
        if batch in after:
            rows.append((f"CPU latency, batch {batch}", f"{before[batch]:.2f} ms", f"{after[batch]:.2f} ms",
                         _change(before[batch], after[batch])))
    return pd.DataFrame(rows, columns=["measured", "before", "after", "change"]).set_index("measured")


def blocked_table(result: SlimResult) -> pd.DataFrame:
    """The groups the plan would prune but that are kept whole, with the layer that blocks each."""
    return pd.DataFrame(
        [
            {"root": group["root"], "layers": ", ".join(group["layers"]), "blocked_by": group["blocked_by"],
             "reason": group["reason"], "planned": group["planned_fraction"]}
            for group in result.blocked
        ],
        columns=["root", "layers", "blocked_by", "reason", "planned"],
    )


def file_name(stem: str, fmt: str) -> str:
    """Download name of the slimmed model, e.g. ``demo-fpgm-slim.pt2``."""
    return f"{stem}-slim{fmt}"


def file_bytes(model: nn.Module, fmt: str, input_shape: tuple[int, ...]) -> bytes:
    """The slimmed model as ``.pt2``, ``.onnx`` or ``.pt`` bytes, round-trip checked by the engine."""
    return serialize_model(model, fmt, input_shape=input_shape, check=True).data
