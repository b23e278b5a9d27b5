"""Sparsity plans: how many filters each layer loses, and the resulting FPGM masks.

A plan is a global sparsity, optional per-layer overrides, and a mode:

* ``uniform``: every targeted layer is pruned at its own sparsity (override or global), with
  FPGMPruner's count ``round(s·N)``, so each layer's mask equals the reference's.
* ``global``: filters of all non-overridden layers compete on normalised scores (each layer's
  scores divided by that layer's mean score, so layers of different width and depth compare);
  ``round(s·total)`` filters are pruned overall, no layer beyond ``max_layer_sparsity`` of its
  filters, and no layer pruned empty unless ``allow_empty``.

Either way a plan resolves to an exact number of filters per layer (``plan_counts``); masks
prune that many filters with the smallest FPGM scores in each layer. Scores are computed once and
can be passed back in, so changing a plan never recomputes distances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Mapping

import torch
from torch import Tensor, nn

from .distance import Metric, check_metric, fpgm_scores
from .errors import PlanError
from .layers import LayerInfo, layer_filters, prunable_layers
from .masks import check_sparsity, mask_from_scores, prune_count

__all__ = ["PlanMode", "SparsityPlan", "layer_scores", "targeted_layers", "plan_counts", "plan_masks"]

PlanMode = Literal["uniform", "global"]


@dataclass(frozen=True)
class SparsityPlan:
    """What to prune. ``counts`` (exact filters per layer, from a recipe) wins over everything else."""

    sparsity: float = 0.0
    metric: Metric = "l2"
    overrides: Mapping[str, float] = field(default_factory=dict)
    mode: PlanMode = "uniform"
    max_layer_sparsity: float = 0.9
    include_output: bool = False
    allow_empty: bool = False
    counts: Mapping[str, int] | None = None

    def validated(self) -> "SparsityPlan":
        """The same plan with its numbers and metric checked (PlanError names what is wrong)."""
        if self.mode not in ("uniform", "global"):
            raise PlanError(f"unknown plan mode {self.mode!r}: use 'uniform' or 'global'")
        overrides = {str(k): check_sparsity(v, f"sparsity for layer {k!r}") for k, v in self.overrides.items()}
        return replace(
            self,
            sparsity=check_sparsity(self.sparsity),
            metric=check_metric(self.metric),
            overrides=overrides,
            max_layer_sparsity=check_sparsity(self.max_layer_sparsity, "max_layer_sparsity"),
        )


def targeted_layers(layers: list[LayerInfo], plan: SparsityPlan) -> list[LayerInfo]:
    """The layers a plan may prune: all but the output layer, unless included or overridden."""
    names = {layer.name for layer in layers}
    unknown = [name for name in (plan.overrides or {}) if name not in names]
    if plan.counts is not None:
        unknown += [name for name in plan.counts if name not in names]
    if unknown:
        raise PlanError(f"unknown layer(s) {', '.join(sorted(unknown))}: not a prunable layer of this model")
    return [
        layer
        for layer in layers
        if not layer.is_output or plan.include_output or layer.name in plan.overrides
        or (plan.counts is not None and layer.name in plan.counts)
    ]


def layer_scores(
    model: nn.Module,
    metric: Metric = "l2",
    *,
    device: str | torch.device | None = None,
    names: list[str] | None = None,
) -> dict[str, Tensor]:
    """FPGM scores (CPU, float64) of every prunable layer, or of the named ones, keyed by name."""
    modules = dict(model.named_modules())
    wanted = names if names is not None else [layer.name for layer in prunable_layers(model)]
    scores = {}
    for name in wanted:
        try:
            weight = layer_filters(modules[name])
            scores[name] = fpgm_scores(weight, metric, device=device).cpu()
        except PlanError as exc:
            raise PlanError(f"layer {name!r}: {exc}") from exc
    return scores


def _global_counts(
    layers: list[LayerInfo], scores: Mapping[str, Tensor], sparsity: float, cap: float, allow_empty: bool
) -> dict[str, int]:
    """Per-layer prune counts when all filters compete on scores normalised by their layer's mean."""
    if not layers:
        return {}
    total = sum(layer.filters for layer in layers)
    budget = prune_count(sparsity, total)
    limits = []
    for layer in layers:
        limit = math.floor(cap * layer.filters + 1e-9)
        if not allow_empty:
            limit = min(limit, layer.filters - 1)
        limits.append(max(limit, 0))
    normalised, owners = [], []
    for position, layer in enumerate(layers):
        layer_score = scores[layer.name]
        mean = layer_score.mean()
        normalised.append(layer_score / mean if mean > 0 else torch.zeros_like(layer_score))
        owners.append(torch.full((layer.filters,), position, dtype=torch.long))
    # Within a layer the order of normalised scores is the order of raw scores, so the filters a
    # layer loses are always its lowest-scored ones: per-layer counts describe the result fully.
    order = torch.argsort(torch.cat(normalised), stable=True)
    owner_of = torch.cat(owners)[order].tolist()
    counts = [0] * len(layers)
    taken = 0
    for position in owner_of:
        if taken >= budget:
            break
        if counts[position] < limits[position]:
            counts[position] += 1
            taken += 1
    return {layer.name: count for layer, count in zip(layers, counts)}


def plan_counts(
    layers: list[LayerInfo], plan: SparsityPlan, scores: Mapping[str, Tensor] | None = None
) -> dict[str, int]:
    """Filters to prune per targeted layer. ``scores`` are needed only in global mode."""
    plan = plan.validated()
    targets = targeted_layers(layers, plan)
    if plan.counts is not None:
        counts = {}
        for layer in targets:
            count = int(plan.counts.get(layer.name, 0))
            if not 0 <= count <= layer.filters:
                raise PlanError(f"layer {layer.name!r}: cannot prune {count} of {layer.filters} filters")
            counts[layer.name] = count
        return counts
    fixed = {layer.name: prune_count(plan.overrides[layer.name], layer.filters) for layer in targets if layer.name in plan.overrides}
    free = [layer for layer in targets if layer.name not in plan.overrides]
    if plan.mode == "uniform":
        fixed.update({layer.name: prune_count(plan.sparsity, layer.filters) for layer in free})
    else:
        if scores is None or any(layer.name not in scores for layer in free):
            raise PlanError("global ranking needs the FPGM scores of every competing layer")
        fixed.update(_global_counts(free, scores, plan.sparsity, plan.max_layer_sparsity, plan.allow_empty))
    return {layer.name: fixed[layer.name] for layer in targets}


def plan_masks(
    model: nn.Module,
    plan: SparsityPlan,
    *,
    device: str | torch.device | None = None,
    scores: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Keep-masks (True = kept, CPU bool) for every targeted layer of ``model`` under ``plan``.

    Pass ``scores`` from :func:`layer_scores` (same metric) to skip recomputing distances; layers
    missing from it are scored here.
    """
    plan = plan.validated()
    layers = prunable_layers(model)
    targets = targeted_layers(layers, plan)
    known = dict(scores or {})

    def score_missing(names: list[str]) -> None:
        missing = [name for name in names if name not in known]
        if missing:
            known.update(layer_scores(model, plan.metric, device=device, names=missing))

    if plan.mode == "global" and plan.counts is None:
        score_missing([layer.name for layer in targets if layer.name not in plan.overrides])
    counts = plan_counts(layers, plan, known)
    filters = {layer.name: layer.filters for layer in targets}
    # Layers pruned not at all or entirely need no distances.
    score_missing([name for name, count in counts.items() if 0 < count < filters[name]])
    return {
        name: mask_from_scores(known[name], count) if 0 < count < filters[name]
        else torch.full((filters[name],), count == 0, dtype=torch.bool)
        for name, count in counts.items()
    }
