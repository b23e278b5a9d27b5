"""What training wins back: criteria × sparsities × seeds, each pruned and then fine-tuned the same way.

The teaching sweep after fine-tuning: FPGM (L1, L2), norm and random pruning at each sparsity, every
point fine-tuned with the same settings, over several seeds (the seed sets the batch order and, for
random pruning, the draw), beside the same point right after pruning. The points are independent,
so they run through an :class:`fpgm_core.execution.Executor` with a module-level task
(:func:`finetune_point`) and a picklable shared value (:class:`SweepInputs`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from ..counting import estimate_pruned_costs
from ..criteria import CRITERIA, check_criterion
from ..errors import PlanError
from ..execution import INLINE, Executor, Progress
from ..masks import check_sparsity
from ..plan import SparsityPlan
from .data import TrainingData
from .loop import fine_tune
from .settings import FineTuneSettings

__all__ = [
    "SWEEP_CRITERIA",
    "SWEEP_SPARSITIES",
    "SweepInputs",
    "SweepPoint",
    "FineTunedPoint",
    "finetune_point",
    "finetuned_sweep",
    "finetuned_summary",
]

SWEEP_CRITERIA: tuple[str, ...] = ("fpgm-l2", "fpgm-l1", "norm-l2", "random")
SWEEP_SPARSITIES: tuple[float, ...] = (0.3, 0.5, 0.7)


@dataclass(frozen=True)
class SweepInputs:
    """What every point reads: the unpruned model, the data, the shared settings and the device."""

    model: nn.Module
    data: TrainingData
    settings: FineTuneSettings
    device: str


@dataclass(frozen=True)
class SweepPoint:
    """One point to fine-tune: a criterion at a uniform sparsity, with a seed."""

    criterion: str
    sparsity: float
    seed: int

    def label(self) -> str:
        """E.g. ``fpgm-l2 at 30% seed 1``."""
        return f"{self.criterion} at {self.sparsity:.0%} seed {self.seed}"


@dataclass(frozen=True)
class FineTunedPoint:
    """A point's held-out figures right after pruning and after fine-tuning, and what it removed."""

    criterion: str
    sparsity: float
    seed: int
    pruned: int
    baseline_top1: float | None
    pruned_top1: float | None
    top1: float | None
    agreement: float
    pruned_agreement: float
    flops_removed: float
    params_removed: float
    seconds: float

    @property
    def drop(self) -> float | None:
        """Top-1 lost against the unpruned model after fine-tuning (None without labels)."""
        return None if self.top1 is None or self.baseline_top1 is None else self.baseline_top1 - self.top1

    def to_dict(self) -> dict:
        """A JSON-ready dict (with ``drop``)."""
        return {**asdict(self), "drop": self.drop}


def finetune_point(shared: SweepInputs, point: SweepPoint) -> FineTunedPoint:
    """Prune ``shared.model`` uniformly at ``point.sparsity`` by ``point.criterion`` and fine-tune it (the task)."""
    settings = replace(shared.settings, criterion=point.criterion, seed=point.seed)
    plan = SparsityPlan(sparsity=point.sparsity)
    result = fine_tune(shared.model, plan, shared.data, settings, device=shared.device)
    costs = estimate_pruned_costs(shared.model, result.masks, shared.data.input_shape)
    baseline = result.baseline.top1
    return FineTunedPoint(
        criterion=point.criterion,
        sparsity=point.sparsity,
        seed=point.seed,
        pruned=sum(result.counts.values()),
        baseline_top1=None if baseline != baseline else baseline,
        pruned_top1=result.untrained.top1,
        top1=result.final.top1,
        agreement=result.final.agreement,
        pruned_agreement=result.untrained.agreement,
        flops_removed=costs.flops_removed,
        params_removed=costs.params_removed,
        seconds=result.seconds,
    )


def finetuned_sweep(
    model: nn.Module,
    data: TrainingData,
    settings: FineTuneSettings = FineTuneSettings(),
    *,
    sparsities: Sequence[float] = SWEEP_SPARSITIES,
    criteria: Sequence[str] = SWEEP_CRITERIA,
    seeds: Sequence[int] = (0, 1, 2),
    executor: Executor = INLINE,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[FineTunedPoint]:
    """Every criterion at every sparsity and seed, fine-tuned with ``settings``; in criterion-major order.

    ``settings.criterion`` and ``settings.seed`` are replaced by each point's. ``should_stop`` is
    polled between points (EvaluationCancelled); ``progress(done, total, label)`` after each.
    """
    criteria = [check_criterion(c) for c in criteria]
    sparsities = [check_sparsity(s) for s in sparsities]
    if not seeds:
        raise PlanError("the fine-tuned sweep needs at least one seed")
    settings = settings.validated()
    points = [SweepPoint(c, s, int(seed)) for c in criteria for s in sparsities for seed in seeds]
    shared = SweepInputs(model, data, settings, str(device))
    if progress is not None and points:
        progress(0, len(points), f"starting with {points[0].label()}")  # a point takes seconds: say so at once
    return executor.run(finetune_point, shared, points, label=SweepPoint.label, progress=progress, should_stop=should_stop)


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return statistics.fmean(known), statistics.pstdev(known) if len(known) > 1 else 0.0


def finetuned_summary(points: Sequence[FineTunedPoint]) -> list[dict]:
    """One row per (criterion, sparsity): mean and standard deviation over seeds, before and after fine-tuning."""
    groups: dict[tuple[str, float], list[FineTunedPoint]] = {}
    for point in points:
        groups.setdefault((point.criterion, point.sparsity), []).append(point)
    rows = []
    for (criterion, sparsity), group in groups.items():
        row = {"criterion": criterion, "sparsity": sparsity, "runs": len(group), "flops_removed": group[0].flops_removed,
               "params_removed": group[0].params_removed, "baseline_top1": group[0].baseline_top1}
        for name, values in (("pruned_top1", [p.pruned_top1 for p in group]), ("top1", [p.top1 for p in group]),
                             ("drop", [p.drop for p in group]), ("agreement", [p.agreement for p in group])):
            row[name], row[f"{name}_std"] = _mean_std(values)
        known = [p.top1 for p in group if p.top1 is not None]
        row["top1_min"], row["top1_max"] = (min(known), max(known)) if known else (None, None)
        rows.append(row)
    return rows
