"""Which filters to prune, by criteria FPGM is compared with: smallest norm, and random choice.

A plan decides *how many* filters each layer loses (``plan_counts``); a criterion decides
*which*. Every criterion is a per-layer score where the lowest are pruned first, so all of them
go through the same ``mask_from_scores`` and prune exactly the same number of filters per layer:
only the choice differs, which is what a fair comparison needs.

* ``fpgm-l2`` / ``fpgm-l1``: summed distance to the layer's other filters (near the geometric
  median = replaceable), from :func:`fpgm_core.layer_scores`.
* ``norm-l1`` / ``norm-l2``: the filter's own norm ("smaller-norm-less-important", Li et al. 2017).
* ``random``: a seeded uniform draw, the baseline any criterion must beat.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .errors import PlanError
from .layers import layer_filters, prunable_layers
from .masks import mask_from_scores
from .plan import SparsityPlan, layer_scores, plan_counts

__all__ = [
    "CRITERIA",
    "CRITERION_LABELS",
    "check_criterion",
    "criterion_metric",
    "filter_norms",
    "criterion_scores",
    "criterion_masks",
    "geometric_median",
]

CRITERIA: tuple[str, ...] = ("fpgm-l2", "fpgm-l1", "norm-l1", "norm-l2", "random")
CRITERION_LABELS: dict[str, str] = {
    "fpgm-l2": "FPGM (L2)",
    "fpgm-l1": "FPGM (L1)",
    "norm-l1": "smallest L1 norm",
    "norm-l2": "smallest L2 norm",
    "random": "random",
}


def check_criterion(criterion: str) -> str:
    """Return ``criterion`` normalised ("FPGM-L2" → "fpgm-l2"), or raise PlanError naming the choices."""
    name = str(criterion).lower()
    if name not in CRITERIA:
        raise PlanError(f"unknown criterion {criterion!r}: use one of {', '.join(CRITERIA)}")
    return name


def criterion_metric(criterion: str) -> str | None:
    """The FPGM distance metric of an ``fpgm-*`` criterion ("l2", "l1"), None for the others."""
    name = check_criterion(criterion)
    return name.split("-", 1)[1] if name.startswith("fpgm-") else None


def filter_norms(weight: Tensor, p: int = 2) -> Tensor:
    """The L``p`` norm of each filter (row of ``weight`` along dim 0, flattened), float64 on the CPU."""
    matrix = weight.detach().reshape(weight.shape[0], -1).to("cpu", torch.float64)
    return matrix.norm(p=p, dim=1)


def criterion_scores(
    model: nn.Module,
    criterion: str,
    *,
    names: list[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Per-layer scores (CPU, float64) under ``criterion``; the lowest are pruned first.

    ``random`` draws one generator seeded with ``seed`` over all prunable layers in model order,
    so a layer's draw does not depend on which layers are asked for.
    """
    name = check_criterion(criterion)
    layers = prunable_layers(model)
    wanted = names if names is not None else [layer.name for layer in layers]
    metric = criterion_metric(name)
    if metric is not None:
        return layer_scores(model, metric, device=device, names=wanted)
    modules = dict(model.named_modules())
    if name == "random":
        generator = torch.Generator().manual_seed(int(seed))
        drawn = {layer.name: torch.rand(layer.filters, generator=generator, dtype=torch.float64) for layer in layers}
        missing = [layer for layer in wanted if layer not in drawn]
        if missing:
            raise PlanError(f"unknown layer(s) {', '.join(missing)}: not a prunable layer of this model")
        return {layer: drawn[layer] for layer in wanted}
    p = 1 if name == "norm-l1" else 2
    scores = {}
    for layer in wanted:
        if layer not in modules:
            raise PlanError(f"unknown layer {layer!r}: not a prunable layer of this model")
        # layer_filters puts each output channel's weights in one row, also for ConvTranspose.
        scores[layer] = filter_norms(layer_filters(modules[layer]), p)
    return scores


def criterion_masks(
    model: nn.Module,
    plan: SparsityPlan,
    criterion: str = "fpgm-l2",
    *,
    scores: Mapping[str, Tensor] | None = None,
    counts: Mapping[str, int] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Keep-masks (True = kept) pruning as many filters per layer as ``plan``, chosen by ``criterion``.

    Args:
        plan: decides the counts (``plan_counts``; global mode ranks by the plan's own metric).
            For ``fpgm-<plan.metric>`` the masks equal ``plan_masks(model, plan)``.
        scores: this criterion's scores from :func:`criterion_scores`, reused across plans.
        counts: filters to prune per layer, when already resolved (then ``plan`` is not read).
        seed: the draw of ``random``.
    """
    name = check_criterion(criterion)
    plan = plan.validated()
    layers = prunable_layers(model)
    if counts is None:
        plan_scores = None
        if plan.mode == "global" and plan.counts is None:
            same = scores is not None and criterion_metric(name) == plan.metric
            plan_scores = scores if same else layer_scores(model, plan.metric, device=device)
        counts = plan_counts(layers, plan, plan_scores)
    filters = {layer.name: layer.filters for layer in layers}
    unknown = [layer for layer in counts if layer not in filters]
    if unknown:
        raise PlanError(f"unknown layer(s) {', '.join(unknown)}: not a prunable layer of this model")
    partial = [layer for layer, count in counts.items() if 0 < count < filters[layer]]
    known = dict(scores or {})
    missing = [layer for layer in partial if layer not in known]
    if missing:
        known.update(criterion_scores(model, name, names=missing if name != "random" else None, seed=seed, device=device))
    return {
        layer: mask_from_scores(known[layer], count) if layer in partial
        else torch.full((filters[layer],), count == 0, dtype=torch.bool)
        for layer, count in counts.items()
    }


def geometric_median(points: Tensor, *, iterations: int = 500, tolerance: float = 1e-10) -> Tensor:
    """The point minimising the summed L2 distance to the rows of ``points`` (Weiszfeld's iteration).

    Accurate to about a part in a million of that sum, plenty for a picture; exact when the
    median is one of the points.

    FPGM does not compute it: it prunes the filters with the smallest summed distance to the
    others, which lie nearest it. Shown on the explainer page to make that picture concrete.
    """
    matrix = points.detach().reshape(points.shape[0], -1).to("cpu", torch.float64)
    if matrix.shape[0] == 0:
        raise PlanError("the geometric median of no points is undefined")
    estimate = matrix.mean(dim=0)
    for _ in range(iterations):
        distances = (matrix - estimate).norm(dim=1)
        away = distances > 1e-12
        weights = torch.where(away, 1.0 / distances.clamp(min=1e-300), torch.zeros_like(distances))
        updated = (weights[:, None] * matrix).sum(dim=0) / weights.sum()
        coinciding = int((~away).sum())
        if coinciding:
            # Vardi–Zhang step: a data point under the estimate would get infinite weight. It is the
            # median when the pull of the others (a sum of unit vectors) is at most its multiplicity.
            pull = (weights[:, None] * (matrix - estimate)).sum(dim=0)
            strength = float(pull.norm())
            if strength <= coinciding:
                return estimate
            share = coinciding / strength
            updated = (1 - share) * updated + share * estimate
        if float((updated - estimate).norm()) <= tolerance * (1.0 + float(estimate.norm())):
            return _snap_to_point(matrix, updated)
        estimate = updated
    return _snap_to_point(matrix, estimate)


def _snap_to_point(matrix: Tensor, estimate: Tensor) -> Tensor:
    """The data point nearest ``estimate`` when it sums smaller distances, else ``estimate``.

    Weiszfeld's iteration only creeps towards a median that lies on a data point; that point is
    then the nearest one, and checking it costs one more pass.
    """
    nearest = matrix[int(torch.argmin((matrix - estimate).norm(dim=1)))]
    if float((matrix - nearest).norm(dim=1).sum()) <= float((matrix - estimate).norm(dim=1).sum()):
        return nearest
    return estimate
