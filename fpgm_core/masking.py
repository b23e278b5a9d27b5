"""Fold keep-masks into a copy of a model: pruned filters output exactly zero.

The input model is never modified. For each pruned output channel the filter's weights and bias
are zeroed, and where the layer feeds a BatchNorm directly, that channel's BN weight and bias too —
otherwise BN would turn the zero back into ``bias − mean·γ/σ`` and the channel would live on.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import Tensor, nn

from .errors import PlanError
from .layers import PRUNABLE_TYPES, filter_index, output_width, prunable_layers
from .tracing import fx_graph

__all__ = ["following_batchnorms", "apply_masks", "check_masks"]

_BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def following_batchnorms(model: nn.Module) -> dict[str, str]:
    """Map each prunable layer's name to the BatchNorm that consumes its output directly.

    Found from the torch.fx graph. Models that fx cannot trace fall back to registration order:
    a BatchNorm registered right after a layer, with as many features as it has outputs — true
    of every Conv→BN pair in torchvision but not a proof of data flow, hence only the fallback.
    """
    graph = fx_graph(model)
    if graph is None:
        return _batchnorms_by_order(model)
    modules = dict(model.named_modules())
    found = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), PRUNABLE_TYPES):
            continue
        for user in node.users:
            if user.op == "call_module" and isinstance(modules.get(user.target), _BATCHNORM_TYPES):
                found[node.target] = user.target
    return found


def _batchnorms_by_order(model: nn.Module) -> dict[str, str]:
    found = {}
    previous: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, _BATCHNORM_TYPES) and previous is not None:
            prev_name, prev = previous
            if module.num_features == output_width(prev):
                found[prev_name] = name
        if isinstance(module, PRUNABLE_TYPES) or isinstance(module, _BATCHNORM_TYPES):
            previous = (name, module) if isinstance(module, PRUNABLE_TYPES) else None
    return found


def check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Raise PlanError unless every mask names a prunable layer and has one entry per filter."""
    filters = {layer.name: layer.filters for layer in prunable_layers(model)}
    for name, keep in masks.items():
        if name not in filters:
            raise PlanError(f"mask for unknown layer {name!r}: not a prunable layer of this model")
        if keep.dim() != 1 or keep.shape[0] != filters[name]:
            raise PlanError(f"mask for layer {name!r} has shape {tuple(keep.shape)}, expected ({filters[name]},)")


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Return a NEW model whose pruned filters (mask False) output exactly zero.

    Args:
        model: left untouched.
        masks: layer name → bool tensor with one entry per output channel, True = kept.
    """
    check_masks(model, masks)
    pruned_model = copy.deepcopy(model)
    modules = dict(pruned_model.named_modules())
    batchnorms = following_batchnorms(pruned_model) if masks else {}
    with torch.no_grad():
        for name, keep in masks.items():
            layer = modules[name]
            keep = keep.to(device=layer.weight.device, dtype=torch.bool)
            if bool(keep.all()):
                continue
            layer.weight[filter_index(layer, keep)] = 0
            if layer.bias is not None:
                layer.bias[~keep] = 0
            norm_name = batchnorms.get(name)
            norm = modules[norm_name] if norm_name is not None else None
            if norm is not None and norm.affine:
                norm.weight[~keep] = 0
                norm.bias[~keep] = 0
    return pruned_model
