"""Accuracy as pruning grows: sparsity sweeps per criterion, per-layer sensitivity, budgeted plans.

* :func:`sparsity_sweep`: every criterion at every global sparsity (uniform per layer, output
  layer kept), random over several seeds. Scores are computed once per criterion and reused.
* :func:`layer_sensitivity`: prune one layer at a time at 0.1 … 0.9 (as Distiller's
  sensitivity analysis did) and measure accuracy.
* :func:`suggest_plan`: per-layer sparsities that remove the most FLOPs while the *combined*
  plan, verified on the data, loses at most ``max_drop`` top-1. Per-layer drops do not add up
  (pruning two layers can cost more or less than the sum), so every candidate is evaluated.

Long runs take ``progress(done, total, what)`` and ``should_stop()`` callbacks; a stop raises
:class:`~fpgm_core.evaluation.EvaluationCancelled`. Their evaluations are independent points run
by an ``executor`` (default: one after another in this process; see :mod:`fpgm_core.execution`
for worker processes and Ray clusters): what every point needs (the model, the data, the unpruned
outputs, the scores) is computed here once and shared, each point only masks and evaluates, so a
point gives the same result wherever it runs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .counting import CostSummary, estimate_pruned_costs, input_producers, layer_flops
from .criteria import CRITERIA, check_criterion, criterion_masks, criterion_scores
from .errors import PlanError
from .evaluation import EvalData, EvalResult, EvaluationCancelled, evaluate_masks, predict
from .execution import INLINE, Executor, point_should_stop
from .layers import prunable_layers
from .masks import check_sparsity, prune_count
from .plan import SparsityPlan, layer_scores, plan_counts, plan_masks

__all__ = [
    "SWEEP_SPARSITIES",
    "LAYER_SPARSITIES",
    "DEFAULT_SEEDS",
    "Progress",
    "SweepPoint",
    "sparsity_sweep",
    "sweep_summary",
    "LayerPoint",
    "Sensitivity",
    "layer_sensitivity",
    "PlanSuggestion",
    "suggest_plan",
]

SWEEP_SPARSITIES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
LAYER_SPARSITIES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
Progress = Callable[[int, int, str], None]
# Drops are compared with this slack: a drop of exactly the budget (k/n images) must pass despite
# the rounding of k/n − j/n.
_EPS = 1e-9


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise EvaluationCancelled("stopped")


def _costs(model: nn.Module, data: EvalData, flops, producers) -> tuple[tuple[int, dict[str, int]], Mapping[str, str]]:
    """FLOPs per module and input producers, computed once when not given."""
    flops = flops if flops is not None else layer_flops(model, data.input_shape, device=next(model.parameters()).device)
    producers = producers if producers is not None else input_producers(model)
    return flops, producers


@dataclass(frozen=True)
class SweepPoint:
    """One criterion at one global sparsity (and one seed, for random)."""

    criterion: str
    sparsity: float
    seed: int | None
    pruned: int
    top1: float
    agreement: float
    kl: float
    flops_removed: float
    params_removed: float

    def to_dict(self) -> dict:
        """A JSON-ready dict of the point."""
        return asdict(self)


@dataclass(frozen=True)
class _SweepShared:
    """What every sweep point reads: the model, its data and unpruned outputs, scores and counts."""

    model: nn.Module
    data: EvalData
    reference: Tensor
    scores: dict[tuple[str, int | None], dict[str, Tensor]]
    plans: dict[float, SparsityPlan]
    counts: dict[float, dict[str, int]]


def _sweep_point(shared: _SweepShared, point: tuple[str, int | None, float]) -> EvalResult:
    """One sweep point: ``criterion`` (``seed``) at global ``sparsity``, evaluated."""
    criterion, seed, sparsity = point
    masks = criterion_masks(shared.model, shared.plans[sparsity], criterion, scores=shared.scores[criterion, seed],
                            counts=shared.counts[sparsity])
    return evaluate_masks(shared.model, masks, shared.data, reference=shared.reference, should_stop=point_should_stop())


def _sweep_label(point: tuple[str, int | None, float]) -> str:
    criterion, seed, sparsity = point
    return f"{criterion}{'' if seed is None else f' seed {seed}'} at {sparsity:.0%}"


def sparsity_sweep(
    model: nn.Module,
    data: EvalData,
    *,
    sparsities: Sequence[float] = SWEEP_SPARSITIES,
    criteria: Sequence[str] = CRITERIA,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    reference: Tensor | None = None,
    flops: tuple[int, dict[str, int]] | None = None,
    producers: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    executor: Executor = INLINE,
) -> list[SweepPoint]:
    """Accuracy and fidelity of every criterion at every global sparsity.

    Each sparsity is a uniform plan (every layer but the output loses ``round(s·N)`` filters), so
    all criteria prune the same number of filters per layer. ``random`` runs once per seed.

    Args:
        reference: the unpruned model's logits on ``data`` (computed when not given).
        flops, producers: from ``layer_flops`` / ``input_producers``, to reuse them.
        device: where FPGM distances are computed.
        executor: runs the (criterion, seed, sparsity) points; default in this process.

    Returns:
        One point per (criterion, sparsity[, seed]), in criterion-major order.
    """
    criteria = [check_criterion(c) for c in criteria]
    sparsities = [check_sparsity(s) for s in sparsities]
    if "random" in criteria and not seeds:
        raise PlanError("random pruning needs at least one seed")
    runs = [(c, None) for c in criteria if c != "random"] + [("random", int(s)) for s in seeds if "random" in criteria]
    # Keep the caller's criterion order, random's seeds where random was asked for.
    runs.sort(key=lambda run: criteria.index(run[0]))
    total = len(runs) * len(sparsities)
    if progress is not None:
        progress(0, total, "reference outputs")
    if reference is None:
        reference = predict(model, data.images, should_stop=should_stop)
    flops, producers = _costs(model, data, flops, producers)
    layers = prunable_layers(model)
    plans = {s: SparsityPlan(sparsity=s) for s in sparsities}
    counts = {s: plan_counts(layers, plan) for s, plan in plans.items()}
    scores = {}
    for criterion, seed in runs:
        _check_stop(should_stop)
        scores[criterion, seed] = criterion_scores(model, criterion, seed=seed or 0, device=device)
    costs: dict[float, CostSummary] = {}
    if runs:
        first = runs[0]
        for s in sparsities:
            # The estimate depends only on the fraction each layer keeps: the same for all criteria.
            masks = criterion_masks(model, plans[s], first[0], scores=scores[first], counts=counts[s])
            costs[s] = estimate_pruned_costs(model, masks, data.input_shape, flops=flops, producers=producers)
    points = [(criterion, seed, s) for criterion, seed in runs for s in sparsities]
    shared = _SweepShared(model, data, reference, scores, plans, counts)
    results = executor.run(_sweep_point, shared, points, label=_sweep_label, progress=progress, should_stop=should_stop)
    return [
        SweepPoint(criterion, s, seed, sum(counts[s].values()), result.top1, result.agreement, result.kl,
                   costs[s].flops_removed, costs[s].params_removed)
        for (criterion, seed, s), result in zip(points, results)
    ]


def sweep_summary(points: Sequence[SweepPoint]) -> list[dict]:
    """One row per (criterion, sparsity): mean, min, max and standard deviation over seeds."""
    groups: dict[tuple[str, float], list[SweepPoint]] = {}
    for point in points:
        groups.setdefault((point.criterion, point.sparsity), []).append(point)
    rows = []
    for (criterion, sparsity), group in groups.items():
        top1 = [p.top1 for p in group]
        agreement = [p.agreement for p in group]
        rows.append(
            {
                "criterion": criterion,
                "sparsity": sparsity,
                "runs": len(group),
                "top1": statistics.fmean(top1),
                "top1_min": min(top1),
                "top1_max": max(top1),
                "top1_std": statistics.pstdev(top1),
                "agreement": statistics.fmean(agreement),
                "agreement_min": min(agreement),
                "agreement_max": max(agreement),
                "kl": statistics.fmean(p.kl for p in group),
                "flops_removed": group[0].flops_removed,
            }
        )
    return rows


@dataclass(frozen=True)
class LayerPoint:
    """One layer pruned alone at one sparsity; ``drop`` = baseline top-1 − this top-1."""

    layer: str
    sparsity: float
    pruned: int
    filters: int
    top1: float
    agreement: float
    kl: float
    drop: float

    def to_dict(self) -> dict:
        """A JSON-ready dict of the point."""
        return asdict(self)


@dataclass(frozen=True)
class Sensitivity:
    """Per-layer sensitivity curves and the unpruned model's top-1 they are measured against."""

    baseline_top1: float
    metric: str
    n: int
    points: tuple[LayerPoint, ...]

    def layers(self) -> list[str]:
        """Layers in the order they were measured."""
        return list(dict.fromkeys(point.layer for point in self.points))

    def curve(self, layer: str) -> list[LayerPoint]:
        """One layer's points, by increasing sparsity."""
        return sorted((p for p in self.points if p.layer == layer), key=lambda p: p.sparsity)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the analysis."""
        return {"baseline_top1": self.baseline_top1, "metric": self.metric, "n": self.n,
                "points": [point.to_dict() for point in self.points]}


@dataclass(frozen=True)
class _PlanShared:
    """What every per-layer plan evaluation reads: the model, its data and outputs, FPGM scores."""

    model: nn.Module
    data: EvalData
    reference: Tensor
    scores: dict[str, Tensor]
    metric: str


def _plan_point(shared: _PlanShared, overrides: tuple[tuple[str, float], ...]) -> EvalResult:
    """One plan (these layers at these sparsities, every other layer unpruned), evaluated."""
    plan = SparsityPlan(sparsity=0.0, metric=shared.metric, overrides=dict(overrides))
    masks = plan_masks(shared.model, plan, scores=shared.scores)
    return evaluate_masks(shared.model, masks, shared.data, reference=shared.reference, should_stop=point_should_stop())


def _layer_label(overrides: tuple[tuple[str, float], ...]) -> str:
    ((name, sparsity),) = overrides
    return f"{name} at {sparsity:.0%}"


def layer_sensitivity(
    model: nn.Module,
    data: EvalData,
    *,
    layers: Sequence[str] | None = None,
    sparsities: Sequence[float] = LAYER_SPARSITIES,
    metric: str = "l2",
    reference: Tensor | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    executor: Executor = INLINE,
) -> Sensitivity:
    """Top-1 with only one layer FPGM-pruned, for each layer and sparsity.

    Args:
        layers: which layers (default: every prunable layer but the output layer).
        metric: FPGM distance of the masks.
        executor: runs the (layer, sparsity) points; default in this process.
    """
    infos = {layer.name: layer for layer in prunable_layers(model)}
    names = list(layers) if layers is not None else [name for name, info in infos.items() if not info.is_output]
    unknown = [name for name in names if name not in infos]
    if unknown:
        raise PlanError(f"unknown layer(s) {', '.join(unknown)}: not a prunable layer of this model")
    sparsities = sorted(check_sparsity(s) for s in sparsities)
    total = len(names) * len(sparsities)
    if progress is not None:
        progress(0, total, "reference outputs")
    if reference is None:
        reference = predict(model, data.images, should_stop=should_stop)
    baseline = evaluate_masks(model, {}, data, reference=reference)
    scores = layer_scores(model, metric, device=device, names=names)
    points = [((name, s),) for name in names for s in sparsities]
    shared = _PlanShared(model, data, reference, scores, metric)
    results = executor.run(_plan_point, shared, points, label=_layer_label, progress=progress, should_stop=should_stop)
    layer_points = []
    for ((name, s),), result in zip(points, results):
        filters = infos[name].filters
        layer_points.append(LayerPoint(name, s, prune_count(s, filters), filters, result.top1, result.agreement, result.kl,
                                       baseline.top1 - result.top1))
    return Sensitivity(baseline.top1, metric, data.n, tuple(layer_points))


def _search_ahead(lo: int, hi: int, count: int) -> list[int]:
    """The binary search's next probes from (lo, hi), breadth first: the next one, then both it may lead to, …"""
    probes, queue = [], [(lo, hi)]
    while queue and len(probes) < count:
        low, high = queue.pop(0)
        if high - low > 1:
            mid = (low + high) // 2
            probes.append(mid)
            queue += [(mid, high), (low, mid)]
    return probes


class _Verifier:
    """Evaluates a search's candidate plans, a batch ahead, and counts them as a one-at-a-time search would.

    A plan counts as evaluated (towards ``max_evaluations``, in ``count``, in ``progress``) only
    when the search asks for it; plans evaluated ahead that it never asks for are dropped. So the
    search takes the same path, and suggests the same plan, with any number of workers.
    """

    def __init__(self, executor: Executor, shared: _PlanShared, baseline: EvalResult, max_evaluations: int,
                 progress: Progress | None, should_stop: Callable[[], bool] | None) -> None:
        self.evaluated: dict[tuple, EvalResult] = {(): baseline}
        self.batch = max(1, executor.workers)
        self._ahead: dict[tuple, EvalResult] = {}
        self._executor, self._shared = executor, shared
        self._max, self._progress, self._should_stop = max_evaluations, progress, should_stop

    @property
    def count(self) -> int:
        """Plans evaluated for the search (the unpruned baseline not counted)."""
        return len(self.evaluated) - 1

    def prefetch(self, candidates: Sequence[Mapping[str, float]]) -> None:
        """Evaluate together the first of ``candidates`` not known yet, up to one batch and the budget left."""
        keys: list[tuple] = []
        for overrides in candidates:
            key = tuple(sorted(overrides.items()))
            if key not in self.evaluated and key not in self._ahead and key not in keys:
                keys.append(key)
        keys = keys[: min(self.batch, self._max - self.count)]
        if keys:
            results = self._executor.run(_plan_point, self._shared, keys, label=lambda key: f"a plan over {len(key)} layers",
                                         should_stop=self._should_stop)
            self._ahead.update(zip(keys, results))

    def verify(self, overrides: Mapping[str, float]) -> EvalResult | None:
        """The plan's result, or None once the evaluation budget is spent."""
        key = tuple(sorted(overrides.items()))
        if key not in self.evaluated:
            if self.count >= self._max:
                return None
            _check_stop(self._should_stop)
            if key not in self._ahead:
                self.prefetch([overrides])
            self.evaluated[key] = self._ahead.pop(key)
            if self._progress is not None:
                self._progress(self.count, self._max, f"verified a plan over {len(overrides)} layers")
        return self.evaluated[key]


@dataclass(frozen=True)
class PlanSuggestion:
    """Per-layer sparsities meeting an accuracy budget, with what they were verified to do."""

    overrides: dict[str, float]
    metric: str
    max_drop: float
    baseline_top1: float
    result: EvalResult
    flops_removed: float
    params_removed: float
    evaluations: int

    @property
    def drop(self) -> float:
        """Top-1 lost by the whole plan on the data it was verified on."""
        return self.baseline_top1 - self.result.top1

    def plan(self) -> SparsityPlan:
        """The suggestion as a plan: these overrides, every other layer unpruned."""
        return SparsityPlan(sparsity=0.0, metric=self.metric, overrides=dict(self.overrides)).validated()

    def to_dict(self) -> dict:
        """A JSON-ready dict of the suggestion."""
        return {"overrides": dict(self.overrides), "metric": self.metric, "max_drop": self.max_drop,
                "baseline_top1": self.baseline_top1, "drop": self.drop, **self.result.to_dict(),
                "flops_removed": self.flops_removed, "params_removed": self.params_removed, "evaluations": self.evaluations}


def suggest_plan(
    model: nn.Module,
    data: EvalData,
    sensitivity: Sensitivity,
    max_drop: float,
    *,
    reference: Tensor | None = None,
    flops: tuple[int, dict[str, int]] | None = None,
    producers: Mapping[str, str] | None = None,
    max_evaluations: int = 64,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    executor: Executor = INLINE,
) -> PlanSuggestion:
    """The per-layer plan removing the most FLOPs found whose verified top-1 drop is ≤ ``max_drop``.

    1. A threshold t gives each layer the largest sparsity whose single-layer drop (and that
       of every lower sparsity) is ≤ t. A binary search finds the largest t whose combined plan,
       evaluated on ``data``, meets the budget.
    2. Greedy refinement: raise one layer by one step, best FLOPs gained per single-layer drop
       first, keeping each raise the evaluation confirms.

    Every plan returned was evaluated (the empty plan always qualifies); at most
    ``max_evaluations`` plans are evaluated.

    Args:
        sensitivity: from :func:`layer_sensitivity` on the same model and data.
        max_drop: the budget as a fraction of top-1 (0.01 = one percentage point).
        executor: evaluates the candidate plans. With several workers, the plans the search may
            ask for next are evaluated together ahead of time; the search and its result are the
            same as one plan at a time.
    """
    if not 0 <= max_drop <= 1 or math.isnan(max_drop):
        raise PlanError(f"the accuracy budget {max_drop!r} must be a fraction in [0, 1] (0.01 = one point)")
    if reference is None:
        reference = predict(model, data.images, should_stop=should_stop)
    flops, producers = _costs(model, data, flops, producers)
    names = sensitivity.layers()
    grid = {name: [p.sparsity for p in sensitivity.curve(name)] for name in names}
    drops = {(p.layer, p.sparsity): p.drop for p in sensitivity.points}
    scores = layer_scores(model, sensitivity.metric, device=device, names=names)
    baseline = evaluate_masks(model, {}, data, reference=reference)

    def plan_of(overrides: Mapping[str, float]) -> SparsityPlan:
        return SparsityPlan(sparsity=0.0, metric=sensitivity.metric, overrides=dict(overrides))

    def costs_of(overrides: Mapping[str, float]) -> CostSummary:
        masks = plan_masks(model, plan_of(overrides), scores=scores)
        return estimate_pruned_costs(model, masks, data.input_shape, flops=flops, producers=producers)

    verifier = _Verifier(executor, _PlanShared(model, data, reference, scores, sensitivity.metric), baseline,
                         max_evaluations, progress, should_stop)
    verify = verifier.verify

    def meets(result: EvalResult) -> bool:
        return baseline.top1 - result.top1 <= max_drop + _EPS

    best: dict[str, float] = {}
    best_flops = 0.0

    def consider(overrides: dict[str, float], result: EvalResult) -> None:
        nonlocal best, best_flops
        removed = costs_of(overrides).flops_removed
        if meets(result) and removed > best_flops:
            best, best_flops = dict(overrides), removed

    def allowed(name: str, threshold: float) -> float:
        chosen = 0.0
        for s in grid[name]:
            if drops[name, s] > threshold + _EPS:
                break
            chosen = s
        return chosen

    def at_threshold(threshold: float) -> dict[str, float]:
        chosen = {name: allowed(name, threshold) for name in names}
        return {name: s for name, s in chosen.items() if s > 0}

    # 1. Binary search over the thresholds that change something; lo passes (−1: the empty plan).
    thresholds = sorted({0.0} | {max(d, 0.0) for d in drops.values() if d <= max_drop + _EPS})
    lo, hi = -1, len(thresholds)
    while hi - lo > 1:
        verifier.prefetch([at_threshold(thresholds[m]) for m in _search_ahead(lo, hi, verifier.batch)])
        mid = (lo + hi) // 2
        overrides = at_threshold(thresholds[mid])
        result = verify(overrides)
        if result is None:
            break
        if meets(result):
            lo = mid
            consider(overrides, result)
        else:
            hi = mid

    # 2. Greedy raises from the best plan so far.
    current = dict(best)
    blocked: set[tuple[str, float]] = set()
    exhausted = False
    while not exhausted:
        base_flops = costs_of(current).flops_removed
        candidates = []
        for name in names:
            now = current.get(name, 0.0)
            higher = [s for s in grid[name] if s > now + _EPS]
            if not higher or (name, higher[0]) in blocked or drops[name, higher[0]] > max_drop + _EPS:
                continue
            step = higher[0]
            trial = {**current, name: step}
            gain = costs_of(trial).flops_removed - base_flops
            # Cost of the step: the single-layer drop it adds, at least one image's worth.
            cost = max(drops[name, step] - (drops[name, now] if now > 0 else 0.0), 0.0) + 1.0 / max(data.n, 1)
            candidates.append((gain / cost, name, step, trial))
        if not candidates:
            break
        candidates.sort(key=lambda c: (-c[0], c[1]))
        for i, (_, name, step, trial) in enumerate(candidates):
            verifier.prefetch([candidate[3] for candidate in candidates[i : i + verifier.batch]])
            result = verify(trial)
            if result is None:
                exhausted = True
                break
            if meets(result):
                current = trial
                consider(trial, result)
                break
            blocked.add((name, step))
        else:
            break

    final = verifier.evaluated[tuple(sorted(best.items()))]
    costs = costs_of(best)
    return PlanSuggestion(
        overrides=dict(sorted(best.items(), key=lambda item: names.index(item[0]))),
        metric=sensitivity.metric,
        max_drop=max_drop,
        baseline_top1=baseline.top1,
        result=final,
        flops_removed=costs.flops_removed,
        params_removed=costs.params_removed,
        evaluations=verifier.count,
    )
