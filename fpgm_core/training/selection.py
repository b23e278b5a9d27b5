"""Which filters a fine-tune's masks prune: the plan's counts, chosen by a criterion on given weights.

Counts are resolved once from the plan on the unpruned model (:func:`resolve_counts`); masks are
then chosen for those counts (or a ramp's fraction of them) on whatever weights the model has at
that moment (:func:`select_masks`), so per-epoch re-selection always prunes as many filters as
the plan. Group-consistent masks (:func:`fpgm_core.groups.group_masks`) remove the same channels
from every layer coupled by a residual add or a depthwise conv, so the fine-tuned model slims.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from ..criteria import criterion_masks, criterion_metric, criterion_scores
from ..layers import prunable_layers
from ..plan import SparsityPlan, layer_scores, plan_counts

__all__ = ["resolve_counts", "select_masks"]


def _complete(model: nn.Module, counts: Mapping[str, int], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Masks for every counted layer, in model order: all-kept where ``masks`` has none."""
    filters = {layer.name: layer.filters for layer in prunable_layers(model)}
    names = [name for name in filters if name in counts or name in masks]
    return {name: masks[name].to(torch.bool) if name in masks else torch.ones(filters[name], dtype=torch.bool) for name in names}


def resolve_counts(
    model: nn.Module,
    plan: SparsityPlan,
    *,
    group_consistent: bool = False,
    input_shape: tuple[int, ...] | None = None,
    scores: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, int]:
    """Filters the plan prunes per targeted layer of ``model`` (per dependency group when group-consistent)."""
    plan = plan.validated()
    if group_consistent:
        from ..groups import group_masks

        if input_shape is None:
            raise ValueError("group-consistent masks need the model's input shape")
        masks = group_masks(model, plan, input_shape=input_shape, scores=scores, device=device)
        counts = {name: 0 for name in plan_counts(prunable_layers(model), plan, _global_scores(model, plan, scores, device))}
        counts.update({name: int((~keep).sum()) for name, keep in masks.items()})
        return counts
    return plan_counts(prunable_layers(model), plan, _global_scores(model, plan, scores, device))


def _global_scores(model: nn.Module, plan: SparsityPlan, scores, device) -> Mapping[str, Tensor] | None:
    if plan.mode != "global" or plan.counts is not None:
        return scores
    known = dict(scores or {})
    missing = [layer.name for layer in prunable_layers(model) if layer.name not in known]
    if missing:
        known.update(layer_scores(model, plan.metric, device=device, names=missing))
    return known


def select_masks(
    model: nn.Module,
    counts: Mapping[str, int],
    criterion: str,
    *,
    group_consistent: bool = False,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    scores: Mapping[str, Tensor] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Keep-masks (CPU bool, True = kept) pruning ``counts[layer]`` filters of each layer, chosen by ``criterion``.

    ``scores`` are the criterion's scores on these weights, when already computed.
    """
    metric = criterion_metric(criterion) or "l2"
    plan = SparsityPlan(metric=metric, counts=dict(counts))
    if group_consistent:
        from ..groups import group_masks

        if input_shape is None:
            raise ValueError("group-consistent masks need the model's input shape")
        if scores is None and criterion_metric(criterion) is None:
            scores = criterion_scores(model, criterion, seed=seed, device=device)
        masks = group_masks(model, plan, input_shape=input_shape, scores=scores, device=device)
        return _complete(model, counts, masks)
    masks = criterion_masks(model, plan, criterion, scores=scores, counts=counts, seed=seed, device=device)
    return _complete(model, counts, masks)
