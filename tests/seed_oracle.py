"""The reference: PyTorch's own FPGMPruner, run through its real ``update_mask`` code path."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.ao.pruning._experimental.pruner import FPGMPruner
from torch.ao.pruning._experimental.pruner.parametrization import FakeStructuredSparsity
from torch.nn.utils import parametrize


def seed_mask(weight: Tensor, sparsity: float, dist: int | Callable = 2) -> Tensor:
    """FPGMPruner's keep-mask (True = kept) for ``weight`` at ``sparsity``."""
    holder = nn.Module()
    holder.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    parametrize.register_parametrization(
        holder, "weight", FakeStructuredSparsity(torch.ones(weight.shape[0], dtype=torch.bool))
    )
    FPGMPruner(sparsity_level=sparsity, dist=dist).update_mask(holder, "weight", sparsity)
    return holder.parametrizations.weight[0].mask.clone()


def seed_scores(weight: Tensor, dist: int | Callable = 2) -> Tensor:
    """FPGMPruner's ``_compute_distance`` for ``weight``."""
    return FPGMPruner(dist=dist)._compute_distance(weight.detach())


def exact_scores(weight: Tensor, p: float) -> Tensor:
    """Row sums of the float64 distance matrix computed without the Gram shortcut: the ground truth."""
    flat = weight.detach().double().reshape(weight.shape[0], -1)
    return torch.cdist(flat, flat, p=p, compute_mode="donot_use_mm_for_euclid_dist").sum(1)


def differs_only_at_near_ties(ours: Tensor, reference: Tensor, weight: Tensor, p: float, rtol: float = 2e-5) -> bool:
    """True when two keep-masks prune the same number of filters and every filter they disagree on
    lies within ``rtol`` (relative, in exact float64 scores) of the other mask's choice.

    The reference sums a float32 ``cdist`` whose rounding (up to ~1e-5 relative) can swap two
    filters whose true scores differ by less than that; ours is exact to ~1e-8, so such a swap is
    the reference's rounding, not a different method.
    """
    if int((~ours).sum()) != int((~reference).sum()):
        return False
    differing = (ours != reference).nonzero().flatten()
    if differing.numel() == 0:
        return True
    truth = exact_scores(weight, p)
    spread = truth[differing]
    return bool((spread.max() - spread.min()) <= rtol * spread.abs().max())
