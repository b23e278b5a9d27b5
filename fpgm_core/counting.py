"""Parameters and FLOPs of a model, per layer, and what a set of masks would remove.

FLOPs are counted by ``torch.utils.flop_counter`` on one forward pass (a multiply-add counts 2).
The after-pruning figures are an estimate for the masked plan: each layer keeps the fraction of
its output channels its mask keeps, times the fraction of input channels kept by the layer that
feeds it directly (through BN, activations and pooling; residual adds and concatenations stop the
walk, since a channel there is shared). Physically slimmed models are measured, not estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import PRUNABLE_TYPES
from .tracing import MODEL_LOCK, fx_graph

__all__ = ["CostSummary", "count_parameters", "layer_flops", "count_flops", "input_producers", "estimate_pruned_costs"]

# Modules and functions whose output channel c depends only on input channel c.
_CHANNELWISE_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU,
    nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.sigmoid, torch.nn.functional.silu, torch.nn.functional.gelu}


@dataclass(frozen=True)
class CostSummary:
    """Parameters and FLOPs before and (estimated) after pruning."""

    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    @property
    def params_removed(self) -> float:
        """Fraction of parameters removed."""
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def flops_removed(self) -> float:
        """Fraction of FLOPs removed."""
        return 1 - self.flops_after / self.flops_before if self.flops_before else 0.0


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def layer_flops(model: nn.Module, input_shape: tuple[int, ...], *, device: str | torch.device = "cpu") -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward pass on zeros of ``input_shape``, and FLOPs per module name."""
    sample = torch.zeros(input_shape, device=device)
    # The counter hooks every module's forward process-wide: no other forward may run meanwhile.
    with MODEL_LOCK, torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(sample)
    per_module = {}
    for key, by_op in counter.get_flop_counts().items():
        # Keys are "<RootClass>.<qualified name>"; the root itself has no dot.
        if "." in key:
            per_module[key.split(".", 1)[1]] = int(sum(by_op.values()))
    return int(counter.get_total_flops()), per_module


def count_flops(model: nn.Module, input_shape: tuple[int, ...], *, device: str | torch.device = "cpu") -> int:
    """FLOPs of one forward pass on an input of ``input_shape``."""
    return layer_flops(model, input_shape, device=device)[0]


def input_producers(model: nn.Module) -> dict[str, str]:
    """Map each prunable layer to the prunable layer whose output channels are its input channels.

    Only direct chains through channel-wise modules count; found with torch.fx, empty if the
    model cannot be traced.
    """
    graph = fx_graph(model)
    if graph is None:  # untraceable models get no input-side estimate
        return {}
    modules = dict(model.named_modules())
    producers = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), PRUNABLE_TYPES):
            continue
        source = node.args[0] if node.args else None
        while isinstance(source, torch.fx.Node):
            target = modules.get(source.target) if source.op == "call_module" else None
            if isinstance(target, PRUNABLE_TYPES):
                producers[node.target] = source.target
                break
            channelwise = isinstance(target, _CHANNELWISE_MODULES) or (
                source.op == "call_function" and source.target in _CHANNELWISE_FUNCTIONS
            )
            if not channelwise or not source.args:
                break
            source = source.args[0]
    return producers


def estimate_pruned_costs(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    input_shape: tuple[int, ...],
    *,
    flops: tuple[int, dict[str, int]] | None = None,
    producers: Mapping[str, str] | None = None,
) -> CostSummary:
    """Parameters and FLOPs before, and estimated after, removing the masked filters.

    Pass ``flops`` (from :func:`layer_flops`) and ``producers`` (from :func:`input_producers`) to
    reuse them: both depend only on the model, so a changing plan needs neither recomputed.
    """
    total_flops, per_module = flops if flops is not None else layer_flops(model, input_shape)
    producers = producers if producers is not None else input_producers(model)
    modules = dict(model.named_modules())
    keep_fraction = {name: float(keep.float().mean()) for name, keep in masks.items()}
    params_before = count_parameters(model)
    params_removed = 0.0
    flops_removed = 0.0
    for name, module in modules.items():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        keep_out = keep_fraction.get(name, 1.0)
        grouped = getattr(module, "groups", 1) > 1
        keep_in = 1.0 if grouped else keep_fraction.get(producers.get(name, ""), 1.0)
        kept = keep_out * keep_in
        params_removed += module.weight.numel() * (1 - kept)
        if module.bias is not None:
            params_removed += module.bias.numel() * (1 - keep_out)
        flops_removed += per_module.get(name, 0) * (1 - kept)
    return CostSummary(
        params_before=params_before,
        params_after=int(round(params_before - params_removed)),
        flops_before=total_flops,
        flops_after=int(round(total_flops - flops_removed)),
    )
