"""Slim a fine-tuned model: remove exactly the channels its masks hold at zero.

A fine-tuned model's pruned filters are zero, so FPGM would no longer pick them (a zero filter is
not near the geometric median of the others). :func:`masks_plan` turns the masks themselves into a
plan and scores for :func:`fpgm_core.slim.slim_model`: the plan prunes exactly each layer's masked
count, and the scores are 0 for pruned channels and 1 for kept ones, so every dependency group
removes its masked channels and no others. :func:`slim_masked` checks that it did: masks that are
not group-consistent (two layers added together, masked differently) cannot be slimmed as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ..errors import ModelLoadError
from ..layers import prunable_layers
from ..masking import check_masks
from ..models import read_state_dict
from ..plan import SparsityPlan
from ..slim import SlimError, SlimResult, slim_model

__all__ = ["read_masks", "masks_plan", "slim_masked", "unmasked_entries"]


def read_masks(path: str | os.PathLike) -> dict[str, Tensor]:
    """Keep-masks from a ``.masks.safetensors`` / ``.masks.pt`` file (layer → bool), read without pickle code."""
    state = read_state_dict(Path(path))
    masks = {}
    for name, value in state.items():
        if value.dim() != 1:
            raise ModelLoadError(f"{path}: entry {name!r} has shape {tuple(value.shape)}, not a keep-mask (one flag per filter)")
        if value.dtype != torch.bool and not bool(((value == 0) | (value == 1)).all()):
            raise ModelLoadError(f"{path}: entry {name!r} is not a 0/1 keep-mask")
        masks[name] = value.to(torch.bool)
    if not masks:
        raise ModelLoadError(f"{path} holds no masks")
    return masks


def masks_plan(model: nn.Module, masks: Mapping[str, Tensor], metric: str = "l2") -> tuple[SparsityPlan, dict[str, Tensor]]:
    """A plan pruning exactly each layer's masked count, and scores that rank the masked channels lowest."""
    check_masks(model, masks)
    counts = {name: int((~keep.to(torch.bool)).sum()) for name, keep in masks.items()}
    scores = {layer.name: torch.ones(layer.filters, dtype=torch.float64) for layer in prunable_layers(model)}
    for name, keep in masks.items():
        scores[name] = keep.to(torch.float64)
    return SparsityPlan(metric=metric, counts=counts, include_output=True), scores


def unmasked_entries(model: nn.Module, masks: Mapping[str, Tensor]) -> list[str]:
    """Layers whose weights are not zero at every filter their mask prunes (the masks do not describe these weights)."""
    from ..layers import filter_index

    modules = dict(model.named_modules())
    found = []
    for name, keep in masks.items():
        layer = modules[name]
        if bool(keep.all()):
            continue
        weights = layer.weight.detach()[filter_index(layer, keep.to(layer.weight.device))]
        if bool(weights.ne(0).any()) or (layer.bias is not None and bool(layer.bias.detach()[~keep.to(layer.bias.device)].ne(0).any())):
            found.append(name)
    return found


def slim_masked(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    input_shape: tuple[int, ...],
    metric: str = "l2",
    latency_repeats: int = 0,
    batch_sizes: tuple[int, ...] = (1, 32),
    threads: int | None = None,
) -> SlimResult:
    """The slimmed ``model`` without exactly the channels ``masks`` prune; checked like every slim.

    Raises:
        SlimError: the masks are not group-consistent (their channels cannot all be removed as
            they are), or slimming itself fails its check.
    """
    plan, scores = masks_plan(model, masks, metric)
    result = slim_model(model, plan, input_shape=input_shape, scores=scores, verify=True,
                        latency_repeats=latency_repeats, batch_sizes=batch_sizes, threads=threads)
    filters = {layer.name: layer.filters for layer in prunable_layers(model)}
    differing = []
    for name in sorted(set(masks) | set(result.masks)):
        given = masks[name].to(torch.bool) if name in masks else torch.ones(filters[name], dtype=torch.bool)
        removed = result.masks[name] if name in result.masks else torch.ones(filters[name], dtype=torch.bool)
        if not torch.equal(given.cpu(), removed.cpu()):
            differing.append(name)
    if differing:
        raise SlimError(
            f"these masks cannot be slimmed as they are: layer(s) {', '.join(differing[:4])} share channels with "
            "other layers (a residual add, a depthwise conv) that are masked differently, or are kept whole by a "
            "blocking layer; fine-tune with group-consistent masks (--group-consistent) to get a model that slims"
        )
    return result
