"""The live plan summary: masks, pruned counts and costs from cached scores, and the layer table.

Nothing here computes a distance: scores, FLOPs and input producers come in already computed
(cached per model), so moving a slider only re-ranks scores and re-counts costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pandas as pd
from torch import Tensor, nn

from fpgm_core import CostSummary, LayerInfo, SparsityPlan, estimate_pruned_costs, plan_masks
from fpgm_core.tracing import model_trace

__all__ = ["format_count", "PlanSummary", "summarize", "layer_table", "apply_editor_edits", "needs_all_scores"]


def format_count(value: float, unit: str = "") -> str:
    """A count with an SI prefix: 11689512 → "11.69 M", 1.8e9 → "1.82 G"."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


@dataclass(frozen=True)
class PlanSummary:
    """What a plan does to one model: keep-masks, filters pruned per layer, costs before/after.

    ``tracing_note`` says, where torch.fx could not trace the model, that norms and output layers
    were matched by registration order (the page shows it); None otherwise.
    """

    masks: dict[str, Tensor]
    counts: dict[str, int]
    costs: CostSummary
    tracing_note: str | None = None

    @property
    def pruned(self) -> int:
        """Filters pruned over all layers."""
        return sum(self.counts.values())


def needs_all_scores(plan: SparsityPlan) -> bool:
    """Whether the plan's counts depend on every layer's scores (global ranking) or only on sizes."""
    return plan.mode == "global" and plan.counts is None


def summarize(
    model: nn.Module,
    plan: SparsityPlan,
    scores: Mapping[str, Tensor],
    input_shape: tuple[int, ...],
    flops: tuple[int, dict[str, int]],
    producers: Mapping[str, str],
) -> PlanSummary:
    """Masks, counts and estimated costs of ``plan``, reusing cached scores, FLOPs and producers."""
    masks = plan_masks(model, plan, scores=scores)
    counts = {name: int((~keep).sum()) for name, keep in masks.items()}
    costs = estimate_pruned_costs(model, masks, input_shape, flops=flops, producers=producers)
    return PlanSummary(masks, counts, costs, model_trace(model).fallback_note)


def layer_table(layers: list[LayerInfo], counts: Mapping[str, int], overrides: Mapping[str, float]) -> pd.DataFrame:
    """One row per prunable layer (indexed by name): its size, override, and what the plan prunes."""
    rows = []
    for layer in layers:
        pruned = counts.get(layer.name)
        override = overrides.get(layer.name)
        if override is not None:
            rule = "override"
        elif pruned is None:
            rule = "output" if layer.is_output else "kept"
        else:
            rule = "plan"
        rows.append(
            {
                "layer": layer.name,
                "type": layer.type,
                "filters": layer.filters,
                "override": float(override) if override is not None else None,
                "pruned": int(pruned or 0),
                "kept": layer.filters - int(pruned or 0),
                "sparsity": (pruned or 0) / layer.filters,
                "rule": rule,
            }
        )
    table = pd.DataFrame(rows).set_index("layer")
    table["override"] = table["override"].astype("float64")
    return table


def apply_editor_edits(
    overrides: Mapping[str, float], names: list[str], edits: Mapping | None
) -> dict[str, float]:
    """Overrides after the data editor's ``edited_rows`` (row position → changed cells).

    A cleared cell (None/NaN) removes the override. Applying the same edits twice gives the same
    result, so the editor's pending edits can be folded in on every rerun.
    """
    result = dict(overrides)
    for row, changes in ((edits or {}).get("edited_rows") or {}).items():
        position = int(row)
        if not 0 <= position < len(names) or "override" not in changes:
            continue
        value = changes["override"]
        if value is None or value != value:  # NaN
            result.pop(names[position], None)
        else:
            result[names[position]] = min(max(float(value), 0.0), 1.0)
    return result
