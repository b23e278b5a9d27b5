"""What training wins back: criteria × sparsities × seeds, each pruned and then fine-tuned the same way.

The teaching sweep after fine-tuning: FPGM (L1, L2), norm and random pruning at each sparsity, every
point fine-tuned with the same settings, over several seeds (the seed sets the batch order and, for
random pruning, the draw), beside the same point right after pruning. The points are independent,
so they run through an :class:`fpgm_core.execution.Executor` with a module-level task
(:func:`finetune_point`) and a picklable shared value (:class:`SweepInputs`: the model's weights,
the training and held-out images and the settings, sent once per sweep).

Same answers wherever a point runs: on CPU a fine-tune is bit-reproducible for a given number of
torch threads, so the sweep records the thread count of the process that starts it and every
point on a worker process or a Ray worker runs on that count (Ray gives its workers one thread
per reserved CPU, local workers a share of the cores); a point in the calling process never
changes the process-wide setting. Dropout and other stochastic layers draw from torch's global
generator, which each point seeds with its own seed (and restores afterwards), so a point does
not depend on which points ran before it in the same process. Each point reports the SHA-256 of
its fine-tuned weights, so equal weights can be checked without shipping them back.
"""

from __future__ import annotations

import copy
import os
import socket
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from ..counting import estimate_pruned_costs
from ..criteria import check_criterion
from ..errors import PlanError
from ..execution import INLINE, Executor, Progress, point_should_stop
from ..masks import check_sparsity
from ..plan import SparsityPlan
from ..recipe import model_fingerprint
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
    """What every point reads: the unpruned model, the data, the shared settings, the device, and
    the torch threads of ``caller`` (the host and pid that started the sweep) that points elsewhere match."""

    model: nn.Module
    data: TrainingData
    settings: FineTuneSettings
    device: str
    threads: int = 1
    caller: tuple[str, int] = ("", -1)


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
    #: torch threads the fine-tune ran on (CPU results are bit-reproducible for a given count).
    threads: int = 0
    #: ``model_fingerprint`` of the fine-tuned weights: equal prints, equal weights.
    weights: str = ""

    @property
    def drop(self) -> float | None:
        """Top-1 lost against the unpruned model after fine-tuning (None without labels)."""
        return None if self.top1 is None or self.baseline_top1 is None else self.baseline_top1 - self.top1

    def to_dict(self) -> dict:
        """A JSON-ready dict (with ``drop``)."""
        return {**asdict(self), "drop": self.drop}


def _global_generators(device: str) -> list[int]:
    """The CUDA devices whose generator a point on ``device`` draws dropout from (none on CPU)."""
    target = torch.device(device)
    return [target.index if target.index is not None else torch.cuda.current_device()] if target.type == "cuda" else []


def finetune_point(shared: SweepInputs, point: SweepPoint) -> FineTunedPoint:
    """Prune ``shared.model`` uniformly at ``point.sparsity`` by ``point.criterion`` and fine-tune it (the task)."""
    if (socket.gethostname(), os.getpid()) != shared.caller and torch.get_num_threads() != shared.threads:
        # A worker process runs one point at a time and is ours: the caller's thread count
        # gives the caller's weights bit for bit.
        torch.set_num_threads(shared.threads)
    settings = replace(shared.settings, criterion=point.criterion, seed=point.seed)
    plan = SparsityPlan(sparsity=point.sparsity)
    with torch.random.fork_rng(devices=_global_generators(shared.device)):
        torch.manual_seed(point.seed)
        # Inline, a stop also ends the running point between steps; elsewhere the executor cancels it.
        result = fine_tune(shared.model, plan, shared.data, settings, device=shared.device, should_stop=point_should_stop())
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
        threads=result.threads,
        weights=model_fingerprint(result.model),
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

    ``settings.criterion`` and ``settings.seed`` are replaced by each point's. Each
    (criterion, sparsity, seed) is one point of ``executor``: the model and data go to its workers
    once, the results come back in the points' order, ``progress(done, total, label)`` after each
    finished point. ``should_stop`` is polled between points (and, in this process, between
    training steps); a stop cancels the outstanding points and raises EvaluationCancelled.
    Points run elsewhere use this process's torch threads, for the same weights as here.
    """
    criteria = [check_criterion(c) for c in criteria]
    sparsities = [check_sparsity(s) for s in sparsities]
    if not seeds:
        raise PlanError("the fine-tuned sweep needs at least one seed")
    settings = settings.validated()
    points = [SweepPoint(c, s, int(seed)) for c in criteria for s in sparsities for seed in seeds]
    if torch.device(device).type == "cpu" and any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()  # workers elsewhere may have no GPU; CPU points train on CPU anyway
    shared = SweepInputs(model, data, settings, str(device), torch.get_num_threads(),
                         (socket.gethostname(), os.getpid()))
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
