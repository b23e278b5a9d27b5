"""Parameters and FLOPs of a model, per layer, and what a set of masks would remove.

FLOPs are counted by ``torch.utils.flop_counter`` on one forward pass (a multiply-add counts 2).
The after-pruning figures are an estimate for the masked plan: each layer keeps the fraction of
its output channels its mask keeps, times the fraction of input channels kept by the layer that
feeds it directly (through BN, activations and pooling; residual adds and concatenations stop the
walk, since a channel there is shared). Physically slimmed models are measured, not estimated.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.module_tracker import ModuleTracker

from .layers import PRUNABLE_TYPES
from .tracing import MODEL_LOCK, model_trace

__all__ = ["CostSummary", "count_parameters", "layer_flops", "count_flops", "input_producers", "estimate_pruned_costs"]


class _ThreadModuleTracker(ModuleTracker):
    """torch's ModuleTracker (which FlopCounterMode attributes FLOPs with) deaf to other threads.

    Its module hooks are process-wide: another session's forward pass meanwhile would enter its
    modules into our count's attribution (same-class models even under the same names).
    """

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def _fw_pre_hook(self, mod, input) -> None:
        if threading.get_ident() == self._thread:
            super()._fw_pre_hook(mod, input)

    def _fw_post_hook(self, mod, input, output) -> None:
        if threading.get_ident() == self._thread:
            super()._fw_post_hook(mod, input, output)


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
    """Total FLOPs of one forward pass on zeros of ``input_shape``, and FLOPs per module name.

    Safe beside other threads' forward passes and traces: the counter listens to this thread only,
    and the pass holds :data:`~fpgm_core.tracing.MODEL_LOCK` shared (no export patches modules meanwhile).
    """
    sample = torch.zeros(input_shape, device=device)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _ThreadModuleTracker()
    with MODEL_LOCK.shared(), torch.no_grad(), counter:
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

    Only direct chains through channel-wise modules and functions (norms of any class, activations,
    pooling, channel permutes) count; found from the model's fx data flow
    (:func:`fpgm_core.tracing.model_trace`), empty if the model cannot be traced.
    """
    return dict(model_trace(model).producers)


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
