"""From scores to masks: how many filters a sparsity prunes, and which ones (True = kept)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .distance import Metric, fpgm_scores
from .errors import PlanError

__all__ = ["check_sparsity", "prune_count", "mask_from_scores", "fpgm_mask"]


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Return ``sparsity`` as a float in [0, 1], or raise PlanError naming the bad value."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError) as exc:
        raise PlanError(f"{what} {sparsity!r} is not a number") from exc
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise PlanError(f"{what} {sparsity!r} is outside [0, 1]")
    return value


def prune_count(sparsity: float, filters: int) -> int:
    """Filters pruned at ``sparsity`` out of ``filters``, exactly as FPGMPruner counts them.

    Python's ``round`` rounds halves to even (0.5 → 0, 2.5 → 2): the reference does the same,
    so layers whose sparsity·N ends in .5 prune the same number of filters.
    """
    if sparsity <= 0:
        return 0
    if sparsity >= 1:
        return filters
    return min(max(round(sparsity * filters), 0), filters)


def mask_from_scores(scores: Tensor, pruned: int) -> Tensor:
    """Keep-mask (True = kept) pruning the ``pruned`` filters with the smallest scores.

    Ties break towards the lower index (a stable sort), so a plan always gives the same mask.
    """
    keep = torch.ones(scores.shape[0], dtype=torch.bool)
    if pruned > 0:
        order = torch.argsort(scores.detach().cpu(), stable=True)
        keep[order[:pruned]] = False
    return keep


def fpgm_mask(weight: Tensor, sparsity: float, metric: Metric = "l2", *, device: str | torch.device | None = None) -> Tensor:
    """FPGM keep-mask for one weight (filters along dim 0): True = kept, on the CPU.

    The same weight, metric and sparsity give the same mask as PyTorch's FPGMPruner: sparsity ≤ 0
    keeps all, ≥ 1 prunes all, otherwise ``round(sparsity·N)`` filters nearest the geometric
    median (smallest summed distance) are pruned.
    """
    sparsity = check_sparsity(sparsity)
    filters = weight.shape[0]
    pruned = prune_count(sparsity, filters)
    if pruned in (0, filters):
        return torch.full((filters,), pruned == 0, dtype=torch.bool)
    return mask_from_scores(fpgm_scores(weight, metric, device=device), pruned)
